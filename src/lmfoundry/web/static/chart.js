// Small SVG charts: bars for usage, lines for training loss. No library, no network.

const NS = "http://www.w3.org/2000/svg";
export const COLORS = ["#0f62d6", "#e8590c", "#2b8a3e", "#7048e8"];

function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function short(n) {
  const a = Math.abs(n);
  if (a >= 1e6) return (n / 1e6).toFixed(1).replace(/\.0$/, "") + "M";
  if (a >= 1e3) return (n / 1e3).toFixed(1).replace(/\.0$/, "") + "k";
  if (a > 0 && a < 0.01) return n.toExponential(1);
  return String(Math.round(n * 1000) / 1000);
}

function frame(container, title, width, height) {
  container.replaceChildren();
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  svg.append(svgEl("title", {}, title));
  container.append(svg);
  return svg;
}

function yAxis(svg, box, max, min = 0) {
  for (let i = 0; i <= 4; i++) {
    const v = min + ((max - min) * i) / 4;
    const y = box.bottom - ((v - min) / (max - min || 1)) * (box.bottom - box.top);
    svg.append(svgEl("line", { class: "gridline", x1: box.left, x2: box.right, y1: y, y2: y }));
    svg.append(svgEl("text", { x: box.left - 6, y: y + 4, "text-anchor": "end" }, short(v)));
  }
  svg.append(svgEl("line", { class: "axis", x1: box.left, x2: box.left, y1: box.top, y2: box.bottom }));
  svg.append(svgEl("line", { class: "axis", x1: box.left, x2: box.right, y1: box.bottom, y2: box.bottom }));
}

/** Grouped bars: labels along x, one bar per series at each label. */
export function barChart(container, { title, labels, series }) {
  const width = 720, height = 260;
  const box = { left: 56, right: width - 12, top: 14, bottom: height - 42 };
  const svg = frame(container, title, width, height);
  if (!labels.length) {
    svg.append(svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "No usage in this period yet."));
    return;
  }
  const max = niceMax(Math.max(...series.flatMap((s) => s.values), 0));
  yAxis(svg, box, max);
  const slot = (box.right - box.left) / labels.length;
  const barWidth = Math.min(48, (slot * 0.7) / series.length);
  labels.forEach((label, i) => {
    const x0 = box.left + slot * i + (slot - barWidth * series.length) / 2;
    series.forEach((s, j) => {
      const value = s.values[i] || 0;
      const h = (value / max) * (box.bottom - box.top);
      const bar = svgEl("rect", {
        x: x0 + j * barWidth, y: box.bottom - h, width: Math.max(barWidth - 2, 1), height: h,
        fill: COLORS[j % COLORS.length], rx: 2,
      });
      bar.append(svgEl("title", {}, `${label} · ${s.name}: ${value.toLocaleString("en-US")}`));
      svg.append(bar);
    });
    const text = label.length > 16 ? label.slice(0, 15) + "…" : label;
    svg.append(svgEl("text", { x: box.left + slot * i + slot / 2, y: box.bottom + 16, "text-anchor": "middle" }, text));
  });
}

/** Lines over a numeric x (training step): series of {name, points: [[x, y], ...]}. */
export function lineChart(container, { title, series, xLabel = "step" }) {
  const width = 720, height = 280;
  const box = { left: 56, right: width - 14, top: 14, bottom: height - 40 };
  const svg = frame(container, title, width, height);
  const points = series.flatMap((s) => s.points);
  if (!points.length) {
    svg.append(svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "Waiting for the first step…"));
    return;
  }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const xMin = Math.min(...xs), xMax = Math.max(...xs, xMin + 1);
  const yMax = niceMax(Math.max(...ys)), yMin = 0;
  yAxis(svg, box, yMax, yMin);
  const sx = (x) => box.left + ((x - xMin) / (xMax - xMin)) * (box.right - box.left);
  const sy = (y) => box.bottom - ((y - yMin) / (yMax - yMin)) * (box.bottom - box.top);
  for (const x of [xMin, Math.round((xMin + xMax) / 2), xMax]) {
    svg.append(svgEl("text", { x: sx(x), y: box.bottom + 16, "text-anchor": "middle" }, short(x)));
  }
  svg.append(svgEl("text", { x: (box.left + box.right) / 2, y: height - 6, "text-anchor": "middle" }, xLabel));
  series.forEach((s, j) => {
    if (!s.points.length) return;
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    svg.append(svgEl("path", { d, fill: "none", stroke: COLORS[j % COLORS.length], "stroke-width": 2, "data-series": s.name, "data-points": s.points.length }));
    for (const p of s.points.length <= 60 ? s.points : []) {
      const dot = svgEl("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: COLORS[j % COLORS.length] });
      dot.append(svgEl("title", {}, `${s.name} at ${xLabel} ${p[0]}: ${p[1]}`));
      svg.append(dot);
    }
  });
}

export function legend(container, names, colors = []) {
  container.replaceChildren(...names.map((name, i) => {
    const span = document.createElement("span");
    span.className = `s${i % COLORS.length}`;
    if (colors[i]) span.style.setProperty("--swatch", colors[i]);
    span.textContent = name;
    return span;
  }));
}

function clock(ms, withDay) {
  const d = new Date(ms);
  const hm = `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
  return withDay ? `${d.getMonth() + 1}/${d.getDate()} ${hm}` : hm;
}

/**
 * Lines over time (the monitoring page): series of {name, points: [[ms, y or null], ...]}
 * between `start` and `end` (ms). A null y leaves a gap. Each line carries its points'
 * count and sum (data-points, data-sum) so that a reader (or a test) can check the numbers.
 * A series may name its `color`.
 */
export function timeChart(container, { title, series, start, end, unit = "" }) {
  const width = 560, height = 220;
  const box = { left: 56, right: width - 14, top: 14, bottom: height - 34 };
  const svg = frame(container, title, width, height);
  const ys = series.flatMap((s) => s.points.map((p) => p[1]).filter((y) => y !== null && y !== undefined));
  const yMax = niceMax(Math.max(...ys, 0));
  yAxis(svg, box, yMax, 0);
  const span = Math.max(end - start, 1);
  const sx = (t) => box.left + ((t - start) / span) * (box.right - box.left);
  const sy = (y) => box.bottom - (y / yMax) * (box.bottom - box.top);
  const withDay = span > 6 * 3600 * 1000;
  for (let i = 0; i <= 4; i++) {
    const t = start + (span * i) / 4;
    svg.append(svgEl("text", { x: sx(t), y: box.bottom + 16, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" }, clock(t, withDay)));
  }
  if (unit) svg.append(svgEl("text", { x: box.left, y: 10, class: "unit" }, unit));
  if (!ys.length) {
    svg.append(svgEl("text", { x: (box.left + box.right) / 2, y: (box.top + box.bottom) / 2, "text-anchor": "middle" }, "No requests in this window."));
  }
  series.forEach((s, j) => {
    const color = s.color || COLORS[j % COLORS.length];
    let d = "", pen = false, sum = 0, n = 0;
    for (const [t, y] of s.points) {
      if (y === null || y === undefined) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${sx(t).toFixed(1)},${sy(y).toFixed(1)} `;
      pen = true; sum += y; n += 1;
    }
    const path = svgEl("path", {
      d: d.trim() || "M0,0", fill: "none", stroke: color, "stroke-width": 2,
      "data-series": s.name, "data-points": n, "data-sum": Math.round(sum * 1e6) / 1e6,
    });
    svg.append(path);
    // a dot on lone points, which a line cannot show
    s.points.forEach(([t, y], i) => {
      if (y === null || y === undefined) return;
      const prev = s.points[i - 1], next = s.points[i + 1];
      const alone = (!prev || prev[1] === null || prev[1] === undefined) && (!next || next[1] === null || next[1] === undefined);
      if (!alone && s.points.length > 2) return;
      const dot = svgEl("circle", { cx: sx(t), cy: sy(y), r: 3, fill: color });
      dot.append(svgEl("title", {}, `${s.name} at ${clock(t, withDay)}: ${short(y)}`));
      svg.append(dot);
    });
  });
}
