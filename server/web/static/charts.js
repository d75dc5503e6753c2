// Small SVG charts for the dashboard: lines, grouped bars, horizontal bars. No dependencies.
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const PAD = { top: 14, right: 52, bottom: 30, left: 56 };
  const LEGEND_H = 24;

  function svgEl(tag, attrs, parent) {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    if (parent) parent.appendChild(el);
    return el;
  }

  function text(parent, x, y, content, cls, anchor) {
    const t = svgEl("text", { x, y, class: cls || "axis-label", "text-anchor": anchor || "middle" }, parent);
    t.textContent = content;
    return t;
  }

  function frame(container, rightAxis) {
    const width = container.clientWidth || 560;
    const height = (container.clientHeight || 240) - LEGEND_H;
    container.replaceChildren();
    const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img" }, container);
    const right = rightAxis ? PAD.right : 16;
    return { svg, width, height, w: width - PAD.left - right, h: height - PAD.top - PAD.bottom };
  }

  // A round axis maximum >= v and how many equal steps label it (0.25, 0.5, 1, 2 ... apart).
  function niceScale(v) {
    if (!(v > 0)) return { max: 1, steps: 4 };
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const [m, steps] of [[1, 4], [2, 4], [2.5, 5], [5, 5], [10, 5]]) {
      if (m * p >= v * (1 - 1e-9)) return { max: m * p, steps };
    }
    return { max: 10 * p, steps: 5 };
  }

  function trim(x) {
    return String(Number(x.toFixed(2)));
  }

  function fmt(v) {
    if (Math.abs(v) >= 1e9) return trim(v / 1e9) + "G";
    if (Math.abs(v) >= 1e6) return trim(v / 1e6) + "M";
    if (Math.abs(v) >= 1e3) return trim(v / 1e3) + "k";
    return trim(v);
  }

  function yAxis(f, scale, side, label) {
    const x = side === "left" ? PAD.left : PAD.left + f.w;
    for (let i = 0; i <= scale.steps; i++) {
      const v = (scale.max * i) / scale.steps;
      const y = PAD.top + f.h - (f.h * i) / scale.steps;
      if (side === "left") svgEl("line", { x1: PAD.left, x2: PAD.left + f.w, y1: y, y2: y, class: "grid" }, f.svg);
      text(f.svg, side === "left" ? x - 6 : x + 6, y + 4, fmt(v), "tick", side === "left" ? "end" : "start");
    }
    if (label) {
      const lx = side === "left" ? 12 : f.width - 8;
      const t = text(f.svg, lx, PAD.top + f.h / 2, label, "axis-label");
      t.setAttribute("transform", `rotate(-90 ${lx} ${PAD.top + f.h / 2})`);
    }
  }

  function xTicks(f, xs, xOf) {
    const step = Math.max(1, Math.ceil(xs.length / 10));
    xs.forEach((x, i) => {
      if (i % step === 0 || i === xs.length - 1) text(f.svg, xOf(i), PAD.top + f.h + 16, String(x), "tick");
    });
    text(f.svg, PAD.left + f.w / 2, f.height - 2, "round", "axis-label");
  }

  function legend(container, series) {
    const box = document.createElement("div");
    box.className = "legend";
    for (const s of series) {
      const item = document.createElement("span");
      item.innerHTML = `<i style="background:${s.color}"></i>`;
      item.append(s.name);
      box.appendChild(item);
    }
    container.appendChild(box);
  }

  function empty(container, message) {
    container.replaceChildren();
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = message;
    container.appendChild(p);
    container.dataset.rendered = "0";
  }

  // series: [{name, color, values: [number|null], axis: "left"|"right"}], xs: round numbers.
  function line(container, xs, series, opts) {
    if (!xs.length) return empty(container, "no rounds yet");
    const f = frame(container, series.some((s) => s.axis === "right"));
    const scaleOf = (axis) => niceScale(Math.max(0, ...series.filter((s) => s.axis === axis)
      .flatMap((s) => s.values.filter((v) => v != null))));
    const scale = { left: opts.leftMax ? niceScale(opts.leftMax) : scaleOf("left"), right: scaleOf("right") };
    yAxis(f, scale.left, "left", opts.leftLabel);
    if (series.some((s) => s.axis === "right")) yAxis(f, scale.right, "right", opts.rightLabel);
    const xOf = (i) => PAD.left + (xs.length === 1 ? f.w / 2 : (f.w * i) / (xs.length - 1));
    xTicks(f, xs, xOf);
    let drawn = 0;
    for (const s of series) {
      const yOf = (v) => PAD.top + f.h - (f.h * v) / scale[s.axis].max;
      const pts = s.values.map((v, i) => (v == null ? null : [xOf(i), yOf(v)])).filter(Boolean);
      if (!pts.length) continue;
      svgEl("polyline", { points: pts.map((p) => p.join(",")).join(" "), fill: "none",
        stroke: s.color, "stroke-width": 2, class: s.dashed ? "dashed" : "" }, f.svg);
      if (pts.length <= 60) for (const [x, y] of pts) svgEl("circle", { cx: x, cy: y, r: 2.5, fill: s.color }, f.svg);
      drawn = Math.max(drawn, pts.length);
    }
    legend(container, series);
    container.dataset.rendered = String(drawn);
  }

  // groups: [{name, color, values: [number]}], stacked if opts.stacked.
  function bars(container, xs, groups, opts) {
    if (!xs.length) return empty(container, "no rounds yet");
    const f = frame(container, false);
    const totals = xs.map((_, i) => (opts.stacked
      ? groups.reduce((a, g) => a + (g.values[i] || 0), 0)
      : Math.max(0, ...groups.map((g) => g.values[i] || 0))));
    const scale = niceScale(Math.max(0, ...totals));
    const max = scale.max;
    yAxis(f, scale, "left", opts.label);
    const slot = f.w / xs.length;
    const xOf = (i) => PAD.left + slot * (i + 0.5);
    xTicks(f, xs, xOf);
    const barW = Math.max(1, slot * 0.7 / (opts.stacked ? 1 : groups.length));
    let drawn = 0;
    xs.forEach((_, i) => {
      let base = 0;
      groups.forEach((g, gi) => {
        const v = g.values[i] || 0;
        const hgt = (f.h * v) / max;
        const x = opts.stacked ? xOf(i) - barW / 2 : xOf(i) - (barW * groups.length) / 2 + gi * barW;
        const y = PAD.top + f.h - hgt - (opts.stacked ? (f.h * base) / max : 0);
        svgEl("rect", { x, y, width: Math.max(barW - 1, 1), height: Math.max(hgt, 0), fill: g.color, rx: 1 }, f.svg)
          .appendChild(document.createElementNS(NS, "title")).textContent = `${g.name}: ${fmt(v)}`;
        if (opts.stacked) base += v;
      });
      drawn += 1;
    });
    legend(container, groups);
    container.dataset.rendered = String(drawn);
  }

  // items: [{label, text, parts: [{name, value, color}]}] as horizontal stacked bars.
  function hbars(container, items) {
    if (!items.length) return empty(container, "no devices yet");
    container.replaceChildren();
    const max = Math.max(1, ...items.map((it) => it.parts.reduce((a, p) => a + p.value, 0)));
    for (const it of items) {
      const row = document.createElement("div");
      row.className = "hbar";
      const label = document.createElement("span");
      label.className = "hbar-label";
      label.textContent = it.label;
      const track = document.createElement("div");
      track.className = "hbar-track";
      for (const p of it.parts) {
        const seg = document.createElement("div");
        seg.className = "hbar-seg";
        seg.style.width = `${(100 * p.value) / max}%`;
        seg.style.background = p.color;
        seg.title = `${p.name}: ${p.value}`;
        track.appendChild(seg);
      }
      const total = document.createElement("span");
      total.className = "hbar-value";
      total.textContent = it.text;
      row.append(label, track, total);
      container.appendChild(row);
    }
    const names = items[0].parts.map((p) => ({ name: p.name, color: p.color }));
    if (names.length > 1) legend(container, names);
    container.dataset.rendered = String(items.length);
  }

  return { line, bars, hbars, empty };
})();
