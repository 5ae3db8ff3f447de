/* The viewer's core (report/viewer.py inlines it after plotly.js and before the panels): reads the JSON payload
   into window.VIEWER.data, lets each panel script register itself, then builds one tab per panel. A panel is
   drawn the first time its tab is shown (plotly sizes a chart by its visible container); its section then
   carries data-ready="1". A panel named in data.absent shows the reason instead of being drawn. */
"use strict";
window.VIEWER = (function () {
  const data = JSON.parse(document.getElementById("viewer-data").textContent);
  const panels = [];

  /* el("div", {class: "x", text: "..."}, child, ...): a DOM element; attributes starting with "on" are listeners. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  /* A labelled <select> over options [[value, text], ...] (or plain values) calling onchange(value). */
  function select(id, label, options, value, onchange) {
    const s = el("select", {id: id, onchange: () => onchange(s.value)});
    for (const o of options) {
      const [v, t] = Array.isArray(o) ? o : [o, o];
      s.append(el("option", {value: String(v), text: String(t), selected: String(v) === String(value)}));
    }
    return el("label", {}, label + " ", s);
  }

  /* "#1f77b4" -> "rgba(31,119,180,a)" */
  function rgba(hex, a) {
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${a})`;
  }

  const plotConfig = {displaylogo: false, responsive: true, scrollZoom: false};

  function register(panel) { panels.push(panel); }

  function header() {
    const h = document.getElementById("viewer-header");
    h.append(el("h1", {text: data.title}), el("div", {class: "source", text: "Source: " + data.source}));
    const legend = el("div", {class: "legend"});
    for (const g of data.groups) {
      const i = el("i");
      i.style.background = data.colors[g];
      legend.append(el("span", {}, i, (data.group_labels || {})[g] || g));
    }
    h.append(legend);
  }

  function start() {
    header();
    const nav = document.getElementById("viewer-tabs"), main = document.getElementById("viewer-panels");
    const absent = data.absent || {};
    const known = new Set(panels.map((p) => p.id));
    const all = panels.concat(Object.keys(absent).filter((id) => !known.has(id))
      .map((id) => ({id: id, title: id.charAt(0).toUpperCase() + id.slice(1).replace("_", " ")})));
    const tabs = [];
    function show(k) {
      tabs.forEach((t, j) => {
        t.button.setAttribute("aria-selected", String(j === k));
        t.section.hidden = j !== k;
      });
      const t = tabs[k];
      if (t.drawn) return;
      t.drawn = true;
      if (absent[t.panel.id] !== undefined) {
        t.section.append(el("p", {class: "absent-reason", text: t.panel.title + ": " + absent[t.panel.id]}));
        t.section.dataset.ready = "1";
        return;
      }
      Promise.resolve(t.panel.render(t.section, data)).then(() => { t.section.dataset.ready = "1"; });
    }
    all.forEach((panel, k) => {
      const missing = absent[panel.id] !== undefined;
      const button = el("button", {role: "tab", "data-panel": panel.id, class: missing ? "absent" : null,
                                   title: missing ? absent[panel.id] : null, text: panel.title,
                                   onclick: () => show(k)});
      const section = el("section", {class: "panel", id: "panel-" + panel.id, role: "tabpanel", hidden: true});
      nav.append(button);
      main.append(section);
      tabs.push({panel, button, section, drawn: false});
    });
    const first = tabs.findIndex((t) => absent[t.panel.id] === undefined);
    if (tabs.length) show(first < 0 ? 0 : first);
  }

  return {data, panels, register, start, el, select, rgba, plotConfig};
})();
