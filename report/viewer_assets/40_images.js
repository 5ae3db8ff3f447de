/* Images: the sampled val images at the final epoch (data.images, built by report/viewer_images.py). Per image:
   the photo, its ground truth and each group's prediction (of the seed chosen per group) over the photo at a
   chosen opacity, coloured from the palette; or the error view: wrong pixels red, wrong pixels inside the
   Trimap band (the band the metrics count over, shipped as a mask) yellow, the ground-truth cell showing the
   band itself. Under each prediction the per-image metrics of that run. The images sort by the per-image Δ of
   a metric between two groups, as report.viewer_images.delta_order defines it (this file mirrors it: Δ largest
   first, undefined last, ties in sample order). Label maps arrive as lossless grey images whose grey level is
   the train id. A click on any image opens it at full size. Rows carry data-name; the panel's section carries
   data-ready once every thumbnail is drawn. */
"use strict";
VIEWER.register({
  id: "images",
  title: "Images",
  render(el, data) {
    const V = VIEWER, P = data.images, groups = P.groups, metrics = P.metrics;
    const pairable = P.delta_groups;
    const ignore = P.classes.ignore_index;
    const WRONG = [214, 39, 40], WRONG_IN_BAND = [255, 200, 0], BAND = [31, 119, 180];
    const lut = new Uint8Array(256 * 3), known = new Uint8Array(256);
    P.classes.palette.forEach((c, id) => { lut.set(c, 3 * id); known[id] = 1; });
    known[ignore] = 0;
    const state = {view: "overlay", alpha: 0.5, metric: metrics[0].key, order: "desc",
                   x: pairable[pairable.length - 1], y: pairable[0],
                   seed: Object.fromEntries(groups.map((g) => [g, Object.keys(P.preds[g])[0]]))};

    // ---------------------------------------------------------------------------------------------- controls
    const controls = V.el("div", {class: "controls"},
      V.select("images-view", "show", [["overlay", "prediction over the image"], ["errors", "errors"]], state.view,
               (v) => { state.view = v; redraw(); }),
      opacitySlider(),
      ...groups.map((g, k) => Object.keys(P.preds[g]).length > 1
        ? V.select(`images-seed-${k}`, `${g} seed`, Object.keys(P.preds[g]), state.seed[g],
                   (v) => { state.seed[g] = v; redraw(); })
        : V.el("label", {}, `${g} seed ${state.seed[g]}`)));
    const sorting = V.el("div", {class: "controls"});
    const note = V.el("p", {class: "note", id: "images-note"});
    if (pairable.length > 1) {
      sorting.append(
        V.select("images-metric", "sort by the per-image Δ of", metrics.map((m) => [m.key, m.label]), state.metric,
                 (v) => { state.metric = v; reorder(); }),
        V.select("images-x", "between", pairable, state.x, (v) => { state.x = v; reorder(); }),
        V.select("images-y", "−", pairable, state.y, (v) => { state.y = v; reorder(); }),
        V.select("images-order", "", [["desc", "largest Δ first"], ["asc", "smallest Δ first"],
                                      ["sample", "sample order"]], state.order,
                 (v) => { state.order = v; reorder(); }));
    }
    const rows = V.el("div", {id: "images-rows"});
    const leftOut = P.left_out ? V.el("p", {class: "note", id: "images-left-out", text: P.left_out}) : null;
    el.append(controls, sorting, note, ...(leftOut ? [leftOut] : []), legend(), rows);

    // ---------------------------------------------------------------------------------------------- rows
    const cells = [];  // {canvas, j, kind: "image" | "gt" | group}
    const byName = new Map();
    P.names.forEach((name, j) => {
      const head = V.el("div", {class: "images-head"});
      const grid = V.el("div", {class: "images-grid"});
      grid.append(cell(j, "image", "image"), cell(j, "gt", "ground truth"));
      groups.forEach((g) => grid.append(cell(j, g, g, V.el("div", {class: "images-metrics"}))));
      const row = V.el("div", {class: "images-row", "data-name": name}, head, grid);
      byName.set(name, {row, head, j});
      rows.append(row);
    });

    function cell(j, kind, caption, extra) {
      const canvas = V.el("canvas", {title: "click for the full size"});
      canvas.addEventListener("click", () => openFull(j, kind));
      const box = V.el("div", {class: "images-cell"}, canvas, V.el("div", {class: "images-caption", text: caption}),
                       extra || null);
      if (data.colors && data.colors[kind]) box.style.borderTopColor = data.colors[kind];
      cells.push({canvas, j, kind, metricsBox: extra});
      return box;
    }

    // ---------------------------------------------------------------------------------------------- Δ order
    /* Δ per image of the n images (index into the split): m_X − m_Y, NaN where either mean is undefined. */
    function deltasAll(x, y, key) {
      const mx = P.image_means[x][key], my = P.image_means[y][key];
      return mx.map((v, i) => (v === null || my[i] === null ? NaN : v - my[i]));
    }

    function reorder() {
      const metric = metrics.find((m) => m.key === state.metric);
      let order = P.names.map((_, j) => j);
      let deltas = null, all = null;
      if (pairable.length > 1) {
        all = deltasAll(state.x, state.y, state.metric);
        deltas = P.sampled_index.map((i) => all[i]);
        if (state.order !== "sample") {
          const sign = state.order === "desc" ? -1 : 1;
          order.sort((a, b) => (isNaN(deltas[a]) - isNaN(deltas[b])) ||
                               (isNaN(deltas[a]) ? 0 : sign * (deltas[a] - deltas[b])) || a - b);
        }
        note.textContent = `Δ = the mean over ${state.x}'s seeds − the mean over ${state.y}'s seeds of ` +
          `${metric.label} on each image alone (from the per-image files, epoch ${P.epoch}, ${metric.unit}); ` +
          `rank among all ${P.num_images} images of the split, largest Δ = 1. ${metric.label}: ` +
          (metric.higher_is_better === false ? `lower is better, so a negative Δ is ${state.x}'s gain over ` +
           `${state.y}: "smallest Δ first" shows ${state.x}'s largest gains.`
                                             : `higher is better, so a positive Δ is ${state.x}'s gain.`);
      } else {
        note.textContent = `One group (${groups[0]}): no per-image Δ to sort by (a Δ needs at least 2 groups).`;
      }
      order.forEach((j, pos) => {
        const {row, head} = byName.get(P.names[j]);
        rows.append(row);
        head.textContent = `${pos + 1}. ${P.names[j]}`;
        if (deltas) {
          const d = deltas[j];
          const rank = isNaN(d) ? null : 1 + all.filter((v) => v > d).length;
          head.append(V.el("span", {class: "images-delta", text:
            `Δ(${state.x}−${state.y}) ${metric.label} = ${isNaN(d) ? "n/a" : signed(metric.factor * d)} ` +
            `${metric.unit}` + (rank === null ? "" : ` · rank ${rank} of ${P.num_images}`)}));
        }
      });
      fillMetrics();
    }

    function signed(v) { return (v > 0 ? "+" : "") + v.toFixed(2); }

    /* A per-image value in its display unit: a fraction in percent, a count as it is, pixels with "px". */
    function shown(m, v) {
      if (v === null) return "n/a";
      if (m.unit === "pp") return (m.factor * v).toFixed(2) + " %";
      return m.unit === "count" ? String(Math.round(10 * v) / 10) : (m.factor * v).toFixed(1) + " " + m.unit;
    }

    function fillMetrics() {
      for (const c of cells) {
        if (!c.metricsBox) continue;
        const values = P.values[c.kind][state.seed[c.kind]];
        const table = V.el("table");
        for (const m of metrics) {
          table.append(V.el("tr", {class: m.key === state.metric ? "sorted" : null, title: m.label},
                            V.el("td", {text: m.short}), V.el("td", {text: shown(m, values[m.key][c.j])})));
        }
        c.metricsBox.replaceChildren(table);
      }
    }

    // ---------------------------------------------------------------------------------------------- drawing
    /* An image's pixels: {width, height, data}, data the RGBA bytes of a photo, or one byte per pixel (the grey
       level: a train id, or 0/255 for the band) of a label map. Thumbnails are kept; full sizes decoded on demand. */
    const thumbs = new Map();
    function pixels(uri, keep, grey) {
      if (keep && thumbs.has(uri)) return thumbs.get(uri);
      const done = new Promise((resolve, reject) => {
        const img = new Image();
        img.onload = () => {
          const c = document.createElement("canvas");
          c.width = img.naturalWidth;
          c.height = img.naturalHeight;
          const ctx = c.getContext("2d", {willReadFrequently: true});
          ctx.drawImage(img, 0, 0);
          const rgba = ctx.getImageData(0, 0, c.width, c.height).data;
          let data = rgba;
          if (grey) {
            data = new Uint8Array(c.width * c.height);
            for (let k = 0; k < data.length; k++) data[k] = rgba[4 * k];
          }
          resolve({width: c.width, height: c.height, data});
        };
        img.onerror = () => reject(new Error("the Images panel could not decode one of its images"));
        img.src = uri;
      });
      if (keep) thumbs.set(uri, done);
      return done;
    }

    /* The uris a cell draws from: photo, ground truth, band and (for a group) the chosen seed's prediction. */
    function sources(j, kind, size) {
      const image = P.images[j][size];
      const pred = groups.includes(kind) ? P.preds[kind][state.seed[kind]][j][size] : null;
      return [image.image, image.label, image.band, pred];
    }

    async function draw(canvas, j, kind, size) {
      const [photo, gt, band, pred] = await Promise.all(sources(j, kind, size)
        .map((uri, n) => (uri ? pixels(uri, size === "thumb", n > 0) : null)));
      const w = photo.width, h = photo.height;
      canvas.width = w;
      canvas.height = h;
      const ctx = canvas.getContext("2d");
      const out = ctx.createImageData(w, h), o = out.data, p = photo.data, t = gt.data, b = band.data;
      const ids = kind === "gt" ? t : pred ? pred.data : null;
      const a = state.alpha, errors = state.view === "errors";
      for (let k = 0, i = 0; k < w * h; k++, i += 4) {
        let r = p[i], g = p[i + 1], bl = p[i + 2];
        if (errors && kind !== "image") {
          const grey = 150 + 0.4 * (0.299 * r + 0.587 * g + 0.114 * bl);
          r = g = bl = grey;
          let mark = null;
          if (kind === "gt") mark = b[k] > 127 ? BAND : null;
          else if (t[k] !== ignore && ids[k] !== t[k]) mark = b[k] > 127 ? WRONG_IN_BAND : WRONG;
          if (mark) [r, g, bl] = mark;
        } else if (ids && known[ids[k]]) {
          const c = 3 * ids[k];
          r = (1 - a) * r + a * lut[c];
          g = (1 - a) * g + a * lut[c + 1];
          bl = (1 - a) * bl + a * lut[c + 2];
        }
        o[i] = r;
        o[i + 1] = g;
        o[i + 2] = bl;
        o[i + 3] = 255;
      }
      ctx.putImageData(out, 0, 0);
    }

    function redraw() {
      fillMetrics();
      return Promise.all(cells.map((c) => draw(c.canvas, c.j, c.kind, "thumb")));
    }

    // ---------------------------------------------------------------------------------------------- full size
    function openFull(j, kind) {
      const canvas = V.el("canvas", {id: "images-full-canvas"});
      const what = kind === "image" ? "image" : kind === "gt" ? "ground truth" : `${kind} seed ${state.seed[kind]}`;
      const [h, w] = P.images[j].size;
      const close = () => { modal.remove(); document.removeEventListener("keydown", onKey); };
      const onKey = (e) => { if (e.key === "Escape") close(); };
      const modal = V.el("div", {class: "images-modal", id: "images-modal"},
        V.el("div", {class: "images-modal-bar"},
             V.el("span", {text: `${P.names[j]} · ${what} · ${w}×${h} px (full size; scroll to pan)`}),
             V.el("button", {text: "close (Esc)", onclick: close})),
        V.el("div", {class: "images-modal-body"}, canvas));
      document.addEventListener("keydown", onKey);
      document.body.append(modal);
      return draw(canvas, j, kind, "full").then(() => { modal.dataset.ready = "1"; });
    }

    // ---------------------------------------------------------------------------------------------- pieces
    function opacitySlider() {
      const input = V.el("input", {type: "range", id: "images-opacity", min: "0", max: "100",
                                   value: String(state.alpha * 100)});
      input.addEventListener("input", () => { state.alpha = Number(input.value) / 100; redraw(); });
      return V.el("label", {}, "label opacity ", input);
    }

    function legend() {
      const box = V.el("div", {class: "images-legend", id: "images-legend"});
      P.classes.names.forEach((name, id) => {
        const swatch = V.el("i");
        swatch.style.background = `rgb(${P.classes.palette[id].join(",")})`;
        box.append(V.el("span", {}, swatch, name));
      });
      for (const [colour, text] of [[WRONG, "wrong"], [WRONG_IN_BAND, `wrong, inside the boundary band ` +
          `(Trimap band, r = ${P.boundary_px} px)`], [BAND, "the band (errors view, ground truth)"]]) {
        const swatch = V.el("i", {class: "error-key"});
        swatch.style.background = `rgb(${colour.join(",")})`;
        box.append(V.el("span", {}, swatch, text));
      }
      return box;
    }

    reorder();
    return redraw();
  },
});
