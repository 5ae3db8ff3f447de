/* Tables: the report's tables as aggregate.py built them (report.tables.Table's Markdown view: header, cells in
   percent with 2 decimals, "**x**" for a significant cell, and the notes under it); nothing is recomputed here. */
VIEWER.register({
  id: "tables",
  title: "Tables",
  render(el, data) {
    const V = VIEWER;
    /* "**2.10** ± 0.3" -> nodes with <strong> for the starred parts (textContent only: no HTML from the data) */
    function cell(tag, text) {
      const node = V.el(tag);
      String(text).split("**").forEach((part, k) => {
        if (part) node.append(k % 2 ? V.el("strong", {text: part}) : document.createTextNode(part));
      });
      return node;
    }
    for (const t of data.tables) {
      const block = V.el("div", {class: "table-block", "data-table": t.name}, V.el("h3", {text: t.title}));
      if (t.rows.length) {
        const table = V.el("table", {class: "report"});
        table.append(V.el("thead", {}, V.el("tr", {}, ...t.header.map((h) => cell("th", h)))));
        table.append(V.el("tbody", {}, ...t.rows.map((r) => V.el("tr", {}, ...r.map((c) => cell("td", c))))));
        block.append(table);
      } else if (!t.notes.length) {  // a table with nothing to show is its notes' line(s), as in summary.md
        block.append(V.el("p", {class: "note", text: "(no rows)"}));
      }
      if (t.notes.length) block.append(V.el("ul", {}, ...t.notes.map((n) => V.el("li", {text: n}))));
      el.append(block);
    }
  },
});
