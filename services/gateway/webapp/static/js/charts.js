// A time-series chart on uPlot that updates its data in place (no flicker on refresh).
import { html, useEffect, useRef } from "./html.js";
import uPlot from "../vendor/uPlot.esm.js";

const COLORS = ["#6366f1", "#10b981", "#f59e0b", "#ef4444"];

function axisColor() {
  return matchMedia("(prefers-color-scheme: dark)").matches ? "#cbd5e1" : "#475569";
}

export function TimeChart({ title, days, series, unit = "" }) {
  const box = useRef(null);
  const plot = useRef(null);
  const data = [days.map((d) => Date.parse(`${d}T00:00:00Z`) / 1000), ...series.map((s) => s.values)];
  const shape = series.map((s) => s.label).join("|");

  useEffect(() => {
    const el = box.current;
    const width = () => Math.max(240, el.clientWidth);
    const stroke = axisColor();
    const grid = { stroke: "rgba(128,128,128,0.15)" };
    plot.current = new uPlot(
      {
        width: width(),
        height: 200,
        legend: { show: true },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true } },
        axes: [
          { stroke, grid, ticks: grid },
          {
            stroke, grid, ticks: grid, size: unit ? 76 : 56,
            values: (u, v) => v.map((x) => `${x.toLocaleString("en-US")}${unit}`),
          },
        ],
        series: [
          {},
          ...series.map((s, i) => ({
            label: s.label,
            stroke: COLORS[i % COLORS.length],
            width: 2,
            points: { show: days.length < 40 },
            value: (u, v) => (v == null ? "–" : `${Math.round(v * 100) / 100}${unit}`),
          })),
        ],
      },
      data,
      el,
    );
    const resize = new ResizeObserver(() => plot.current.setSize({ width: width(), height: 200 }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      plot.current.destroy();
      plot.current = null;
    };
  }, [shape]);

  useEffect(() => {
    if (plot.current) plot.current.setData(data);
  });

  return html`<figure class="card chart">
    <figcaption>${title}</figcaption>
    <div ref=${box} role="img" aria-label=${`${title}, ${days.length} days`}></div>
  </figure>`;
}
