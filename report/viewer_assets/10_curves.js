/* Curves: one metric at a time (a selector over every metric in the payload), per group the mean over seeds with
   its 95 % band (1.96·SE or Student-t, both computed by report.stats), each seed as a thin line (all on or off,
   then each toggled in the legend), hover values, zoom on an epoch range (drag across it), and dotted lines at
   the crossover's early and final epochs. Traces carry meta {role: "mean" | "band" | "band-lower" | "seed",
   group}, which the tests read. */
VIEWER.register({
  id: "curves",
  title: "Curves",
  render(el, data) {
    const V = VIEWER, curves = data.curves;
    const state = {metric: curves.metrics[0].key, band: curves.band, seeds: false};
    const plot = V.el("div", {class: "plot", id: "curves-plot"});
    plot.style.height = "560px";
    const seedBox = V.el("input", {type: "checkbox", id: "curves-seeds",
                                   onchange: () => { state.seeds = seedBox.checked; draw(); }});
    el.append(
      V.el("div", {class: "controls"},
        V.select("curves-metric", "metric", curves.metrics.map((m) => [m.key, m.label]), state.metric,
                 (v) => { state.metric = v; draw(); }),
        V.select("curves-band", "band", Object.entries(curves.bands), state.band,
                 (v) => { state.band = v; draw(); }),
        V.el("label", {}, seedBox, " every seed as a thin line")),
      plot,
      V.el("p", {class: "note", text: "Mean over seeds; shaded: the chosen 95 % interval (none where a group has " +
        "fewer than 2 seeds). Click a legend entry to hide it, drag across epochs to zoom, double-click to reset. " +
        "Dotted: " +
        curves.marks.map((m) => m.label).join(" and ") + " (the crossover table's C−B gap is taken there)."}));

    function traces(metric) {
      const x = curves.epochs, out = [], unit = metric.unit === "%" ? "%" : " " + metric.unit;
      const single = x.length === 1;
      for (const g of data.groups) {
        const c = metric.groups[g], color = data.colors[g], label = (data.group_labels || {})[g] || g;
        const half = c[state.band];
        const lo = c.mean.map((m, i) => (m === null || half[i] === null ? null : m - half[i]));
        const hi = c.mean.map((m, i) => (m === null || half[i] === null ? null : m + half[i]));
        if (!single) {
          out.push({x, y: lo, mode: "lines", line: {width: 0, color}, hoverinfo: "skip", showlegend: false,
                    legendgroup: g, meta: {role: "band-lower", group: g}});
          out.push({x, y: hi, mode: "lines", line: {width: 0, color}, fill: "tonexty", fillcolor: V.rgba(color, 0.18),
                    hoverinfo: "skip", showlegend: false, legendgroup: g, meta: {role: "band", group: g}});
        }
        out.push({x, y: c.mean, name: label, mode: single ? "markers" : "lines+markers", legendgroup: g,
                  line: {color, width: 2}, marker: {size: 4, color},
                  error_y: single ? {type: "data", array: half, visible: true, color} : undefined,
                  customdata: c.mean.map((_, i) => [half[i] === null ? "no CI" : "± " + half[i].toFixed(2), c.n[i]]),
                  hovertemplate: `${g}: %{y:.2f}${unit} %{customdata[0]} (n=%{customdata[1]})<extra></extra>`,
                  meta: {role: "mean", group: g}});
        for (const [seed, y] of Object.entries(c.seeds)) {
          out.push({x, y, name: `${g} seed ${seed}`, mode: "lines", line: {color, width: 0.8}, opacity: 0.55,
                    visible: state.seeds, showlegend: state.seeds, legendgroup: `${g} seed ${seed}`,
                    hovertemplate: `${g} seed ${seed}: %{y:.2f}${unit}<extra></extra>`,
                    meta: {role: "seed", group: g, seed: seed}});
        }
      }
      return out;
    }

    function draw() {
      const metric = curves.metrics.find((m) => m.key === state.metric);
      const marks = curves.marks;
      const layout = {
        margin: {l: 64, r: 16, t: 36, b: 48},
        title: {text: `${metric.label}: mean over seeds, ${curves.bands[state.band]}`, font: {size: 14}},
        hovermode: "x unified",
        // no range slider: it draws every trace twice (~0.3 s at 160 epochs); a few epochs: ticks at them only
        xaxis: {title: {text: "epoch"}, ...(curves.epochs.length <= 20 ? {tickvals: curves.epochs} : {})},
        yaxis: {title: {text: `${metric.label} (${metric.unit})`}, zeroline: false},
        legend: {orientation: "v"},
        shapes: marks.map((m) => ({type: "line", x0: m.epoch, x1: m.epoch, yref: "paper", y0: 0, y1: 1,
                                   line: {color: "#888", dash: "dot", width: 1}})),
        annotations: marks.map((m) => ({x: m.epoch, yref: "paper", y: 1, text: m.label, showarrow: false,
                                        yanchor: "bottom", font: {size: 11, color: "#666"}})),
      };
      return Plotly.react(plot, traces(metric), layout, V.plotConfig);
    }
    return draw();
  },
});
