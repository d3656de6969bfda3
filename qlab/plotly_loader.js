// The browser module of qlab's plotly FigureWidget (qlab.live.figure_widget): plotly's own widget module,
// evaluated once per page and after anywidget's start-up window.
//
// anywidget gives a widget 2 s from the creation of its model to the end of its module's `initialize`; past
// that it rejects the model's `ready` for good, and every later message from the kernel to that model is
// dropped ("[anywidget] Failed to initialize model."): the plot stays as it opened. plotly's module is 5 MB,
// and anywidget imports a widget's module anew for every model (a new blob URL each time): evaluating it
// takes 1.3 s on an idle 2-core Xeon, 3.5 s for three figures at once. So this small module stands in
// for it. Its `initialize` returns at once; plotly's module (its text is the model's `_qlab_plotly_source`)
// is imported once per page, keyed by its hash, and only then does plotly's own `initialize` run.
// Changes of plotly's `_py2js_*` messages (restyle, relayout, update...) that arrive in between are held
// and replayed to plotly's handlers in order, each with the value it carried; the view waits for all that.

const KEY = "__QLAB_PLOTLY_KEY__"; // "plotly:" and the sha256 of plotly's module text (filled in by qlab.live)
const SOURCE = "_qlab_plotly_source";
const HELD = "_py2js_"; // plotly's kernel-to-browser messages: each change is an event, not a state

function plotlyModule(model) {
  const modules = (globalThis.__qlabPlotlyModules ??= new Map());
  if (!modules.has(KEY)) {
    const url = URL.createObjectURL(new Blob([model.get(SOURCE)], { type: "text/javascript" }));
    modules.set(KEY, import(/* @vite-ignore */ url).finally(() => URL.revokeObjectURL(url)));
  }
  return modules.get(KEY);
}

function replay(held) {
  const latest = new Map();
  for (const [event, target, value] of held) {
    const name = event.slice("change:".length);
    if (!latest.has(name)) latest.set(name, [target, target.get(name)]);
    target.set(name, value, { silent: true });
    target.trigger(event, target, value, {});
  }
  for (const [name, [target, value]] of latest) target.set(name, value, { silent: true });
}

export default () => {
  let plotly; // Promise of plotly's widget for this model, initialized, the held changes replayed
  return {
    initialize({ model }) {
      const held = [];
      const hold = (event, target, value) => {
        if (event.startsWith("change:" + HELD)) held.push([event, target, value]);
      };
      model.on("all", hold);
      plotly = plotlyModule(model).then((module) => {
        model.off("all", hold);
        const widget = module.default();
        widget.initialize({ model });
        replay(held);
        return widget;
      });
      plotly.catch((error) => console.error("[qlab] plotly's widget module failed to load:", error));
    },
    async render(view) {
      return (await plotly).render(view);
    },
  };
};
