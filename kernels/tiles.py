"""Pieces shared by the matmul kernels (``@triton.jit`` helpers, inlined where they are called)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """The (row, column) output tile of program ``pid`` in grouped ("swizzled") order, as in Triton's
    matmul tutorial 03: GROUP_M consecutive tile rows are visited column by column, so programs that run
    at the same time share B's columns (and A's rows) in L2 instead of streaming all of B per tile row."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n
