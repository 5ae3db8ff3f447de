/* Per class: one metric's per-class values (IoU, Boundary IoU, ...) at a chosen epoch, one bar per group (mean
   ± inter-seed std, value axis from 0), and each group's Δ against a chosen reference group; classes sorted by
   the Δ of a chosen group, its largest gains first (largest Δ first, or smallest where lower is better: the
   metric's higher_is_better, from metrics.registry), classes without a Δ last. With one group there is no Δ:
   the classes are sorted by their value and a line says why. Bar traces carry meta {role: "value" | "delta",
   group}. */
VIEWER.register({
  id: "per_class",
  title: "Per class",
  render(el, data) {
    const V = VIEWER, pc = data.per_class, groups = data.groups;
    const state = {metric: pc.metrics[0].key, epoch: String(pc.epoch), reference: pc.reference, compare: pc.compare};
    const bars = V.el("div", {class: "plot", id: "per-class-values"});
    const deltas = V.el("div", {class: "plot", id: "per-class-deltas"});
    const note = V.el("p", {class: "note", id: "per-class-note"});
    bars.style.height = "380px";
    deltas.style.height = "300px";
    const controls = V.el("div", {class: "controls"},
      V.select("per-class-metric", "metric", pc.metrics.map((m) => [m.key, m.label]), state.metric,
               (v) => { state.metric = v; draw(); }),
      V.select("per-class-epoch", "epoch", pc.epochs, state.epoch, (v) => { state.epoch = v; draw(); }));
    let compareSelect = null;
    if (groups.length > 1) {
      controls.append(V.select("per-class-reference", "Δ against", groups, state.reference, (v) => {
        state.reference = v;
        if (state.compare === v) state.compare = groups.filter((g) => g !== v).slice(-1)[0];
        compareSelect.querySelector("select").value = state.compare;
        draw();
      }));
      compareSelect = V.select("per-class-compare", "sorted by the Δ of", groups, state.compare,
                               (v) => { state.compare = v; draw(); });
      controls.append(compareSelect);
    }
    el.append(controls, note, bars, ...(groups.length > 1 ? [deltas] : []));  // append(null) would print "null"

    /* class indices sorted by key (largest first, or smallest first when ascending), nulls last, ties in class
       order */
    function order(key, ascending) {
      const sign = ascending ? -1 : 1;
      return key.map((v, i) => [v, i]).sort((a, b) => {
        if (a[0] === null || b[0] === null) return (a[0] === null) - (b[0] === null) || a[1] - b[1];
        return sign * (b[0] - a[0]) || a[1] - b[1];
      }).map((p) => p[1]);
    }

    function draw() {
      const metric = pc.metrics.find((m) => m.key === state.metric), at = metric.values[state.epoch];
      const names = pc.classes, unit = metric.unit, lower = metric.higher_is_better === false;
      const better = lower ? "lower is better" : "higher is better";
      const diff = (g) => at[g].mean.map((v, i) => {
        const r = at[state.reference].mean[i];
        return v === null || r === null ? null : v - r;
      });
      let idx, sorting;
      if (groups.length > 1 && state.compare !== state.reference) {
        idx = order(diff(state.compare), lower);  // the compare group's largest gains first
        sorting = `sorted by Δ(${state.compare}−${state.reference}), ${lower ? "smallest" : "largest"} first`;
        note.textContent = `Δ = mean of a group − mean of ${state.reference} (${unit === "%" ? "pp" : unit}), ` +
          `per class at epoch ${state.epoch}; ${metric.label}: ${better}, so ${lower ? "a negative" : "a positive"} ` +
          `Δ is a gain over ${state.reference}; classes ${sorting} (${state.compare}'s largest gains first).`;
      } else {
        idx = order(at[groups[0]].mean);
        sorting = "sorted by value, largest first";
        note.textContent = groups.length > 1 ? "" : `One group (${groups[0]}): no Δ against a reference (a Δ ` +
          `needs at least 2 groups); classes sorted by value, largest first (${metric.label}: ${better}).`;
      }
      const x = idx.map((i) => names[i]);
      const valueTraces = groups.map((g) => ({
        type: "bar", name: (data.group_labels || {})[g] || g, x, y: idx.map((i) => at[g].mean[i]),
        error_y: {type: "data", array: idx.map((i) => at[g].std[i]), visible: true, thickness: 1, width: 2},
        marker: {color: data.colors[g]}, meta: {role: "value", group: g},
        hovertemplate: `${g} %{x}: %{y:.2f}${unit === "%" ? "%" : " " + unit}<extra></extra>`,
      }));
      const yValue = {title: {text: `${metric.label} (${unit})`}, rangemode: "tozero"};
      if (unit === "%") yValue.range = [0, 100];
      const margin = {l: 64, r: 16, t: 64, b: 90};
      const done = [Plotly.react(bars, valueTraces, {
        barmode: "group", margin, yaxis: yValue, xaxis: {tickangle: -40},
        legend: {orientation: "h", y: 1.0, yanchor: "bottom"},
        title: {text: `${metric.label} per class at epoch ${state.epoch} (mean ± inter-seed std), ${sorting}`,
                font: {size: 14}},
      }, V.plotConfig)];
      if (groups.length > 1) {
        const deltaTraces = groups.filter((g) => g !== state.reference).map((g) => {
          const d = diff(g);
          return {type: "bar", name: `${g}−${state.reference}`, x, y: idx.map((i) => d[i]),
                  marker: {color: data.colors[g]}, meta: {role: "delta", group: g},
                  hovertemplate: `Δ(${g}−${state.reference}) %{x}: %{y:+.2f}<extra></extra>`};
        });
        done.push(Plotly.react(deltas, deltaTraces, {
          barmode: "group", margin, xaxis: {tickangle: -40}, showlegend: true,
          legend: {orientation: "h", y: 1.0, yanchor: "bottom"},
          yaxis: {title: {text: `Δ vs ${state.reference} (${unit === "%" ? "pp" : unit}; ${better})`}, zeroline: true},
          title: {text: `Δ against ${state.reference}`, font: {size: 14}},
        }, V.plotConfig));
      }
      return Promise.all(done);
    }
    return draw();
  },
});
