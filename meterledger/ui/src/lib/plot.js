// Line plots with uPlot (bundled at set-up: no CDN at run time). A plot is made once and
// fed new data on every refresh (setData), so polling a Pi's dashboard redraws, it does
// not rebuild. The number of points drawn is on the element (data-points) for tests.

import uPlot from "uplot";
import { el } from "./dom.js";
import { zone } from "./time.js";

const COLOURS = ["#1f6feb", "#d9480f", "#2b8a3e", "#ae3ec9", "#e67700", "#0c8599"];

// `series` are labels; data is [xs, ys1, ys2, ...] with xs in unix seconds (time axis)
// or plain numbers (time: false).
export class LinePlot {
  constructor(title, series, { time = true, unit = "", height = 220 } = {}) {
    this.node = el("figure", { class: "plot", dataset: { points: "0", title } },
      el("figcaption", {}, title));
    this.series = series;
    this.opts = {
      width: 600, height,
      tzDate: time ? (ts) => uPlot.tzDate(new Date(ts * 1000), zone) : undefined,
      scales: { x: { time } },
      axes: [{}, { label: unit, size: 70 }],
      series: [{ label: time ? "time" : "x" }, ...series.map((label, i) => ({
        label, stroke: COLOURS[i % COLOURS.length], width: 1.5, points: { size: 4 },
      }))],
    };
    this.plot = null;
    this.resize = () => this.plot && this.plot.setSize(this.size());
  }

  size() {
    const w = Math.max(280, (this.node.clientWidth || 600) - 8);
    return { width: w, height: this.opts.height };
  }

  // the data, each array the same length; called on every refresh
  update(data) {
    this.node.dataset.points = String(data[0].length);
    if (!this.plot) {
      this.plot = new uPlot({ ...this.opts, ...this.size() }, data, this.node);
      window.addEventListener("resize", this.resize);
    } else {
      this.plot.setData(data);
    }
  }
}
