// The run report's and the comparison's chart controls (metta/common/run_report.py writes the charts as SVG;
// without this script the page shows them as drawn, raw).
//
// Each line chart (svg.chart with data-box) has data-box ("left top width height" of its plot, in SVG units) and data-domain
// ("x0 x1 y0 y1", the values at the plot's edges); each of its polyline.curve elements has its values in data-y
// (one per point of its points attribute) and data-smooth="1" when smoothing applies (not to evaluation scores,
// which are a few separate measurements). The script adds:
// - smoothing: #smoothing (0 to 0.99) is the weight of an exponential moving average with TensorBoard's bias
//   correction; the raw curve stays drawn, faint, under the smoothed one;
// - values on hover: a guide line at the point nearest the mouse, a dot on each curve and a box with the x value
//   and each curve's value there (raw, and smoothed when smoothing is on).
// window.reportCharts exposes the charts' state for tests.
(function () {
  'use strict';
  const NS = 'http://www.w3.org/2000/svg';
  const slider = document.getElementById('smoothing');
  const sliderText = document.getElementById('smoothing-value');
  const tip = document.getElementById('chart-tip');

  // Labels as the SVG's ticks write them: 1.5k, 2M, 0.013.
  function compact(v) {
    const a = Math.abs(v);
    if (a === 0) return '0';
    for (const [unit, k] of [['G', 1e9], ['M', 1e6], ['k', 1e3]]) {
      if (a >= k) return `${Number((v / k).toPrecision(3))}${unit}`;
    }
    return String(Number(v.toPrecision(a >= 0.01 ? 3 : 2)));
  }
  // Values on hover: four significant digits, integers whole.
  const precise = (v) => (Number.isInteger(v) && Math.abs(v) < 1e7 ? String(v) : String(Number(v.toPrecision(4))));
  const esc = (t) => String(t).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);

  function smoothed(ys, weight) {
    if (weight <= 0) return ys.slice();
    let last = 0;
    return ys.map((y, i) => {
      last = last * weight + (1 - weight) * y;
      return last / (1 - Math.pow(weight, i + 1));
    });
  }

  function setup(svg) {
    const [left, top, w, h] = svg.dataset.box.split(' ').map(Number);
    const [x0, x1, y0, y1] = svg.dataset.domain.split(' ').map(Number);
    const chart = { svg, left, top, w, h, x0, x1, y0, y1, curves: [] };
    for (const line of svg.querySelectorAll('polyline.curve')) {
      const sx = line.getAttribute('points').trim().split(/\s+/).map((pt) => Number(pt.split(',')[0]));
      const ys = line.dataset.y.split(' ').map(Number);
      const dot = document.createElementNS(NS, 'circle');
      dot.setAttribute('class', 'dot');
      dot.setAttribute('r', '3.5');
      dot.setAttribute('fill', line.getAttribute('stroke'));
      dot.style.display = 'none';
      chart.curves.push({ line, raw: null, dot, sx, ys, shown: ys, drawn: line.getAttribute('points'), smooth: line.dataset.smooth === '1', label: line.dataset.label,
        color: line.getAttribute('stroke') });
    }
    chart.guide = document.createElementNS(NS, 'line');
    chart.guide.setAttribute('class', 'guide');
    chart.guide.setAttribute('y1', String(top));
    chart.guide.setAttribute('y2', String(top + h));
    chart.guide.style.display = 'none';
    svg.append(chart.guide, ...chart.curves.map((c) => c.dot));
    svg.addEventListener('mousemove', (e) => hover(chart, e));
    svg.addEventListener('mouseleave', () => leave(chart));
    return chart;
  }

  const toY = (chart, v) => chart.top + (1 - (v - chart.y0) / (chart.y1 - chart.y0)) * chart.h;

  function applySmoothing() {
    const weight = Number(slider.value);
    sliderText.textContent = weight.toFixed(2);
    for (const chart of charts) {
      for (const c of chart.curves) {
        if (!c.smooth) continue;
        c.shown = smoothed(c.ys, weight);
        if (weight > 0 && !c.raw) {  // the raw curve, drawn faintly under the smoothed one
          c.raw = document.createElementNS(NS, 'polyline');
          c.raw.setAttribute('class', 'raw');
          c.raw.setAttribute('stroke', c.color);
          c.raw.setAttribute('points', c.drawn);
          c.line.parentNode.insertBefore(c.raw, c.line);
        }
        c.line.setAttribute('points', weight > 0
          ? c.sx.map((x, i) => `${x.toFixed(1)},${toY(chart, c.shown[i]).toFixed(1)}`).join(' ') : c.drawn);
        if (c.raw) c.raw.style.display = weight > 0 ? '' : 'none';
      }
    }
  }

  function nearest(sx, x) {
    let lo = 0, hi = sx.length - 1;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (sx[mid] < x) lo = mid; else hi = mid;
    }
    return Math.abs(sx[lo] - x) <= Math.abs(sx[hi] - x) ? lo : hi;
  }

  function hover(chart, e) {
    const m = chart.svg.getScreenCTM();
    if (!m) return;
    const px = (e.clientX - m.e) / m.a;
    if (px < chart.left - 4 || px > chart.left + chart.w + 4) { leave(chart); return; }
    // The guide goes to the point nearest the mouse; each curve shows its point there, if it has one close by.
    let gx = null;
    for (const c of chart.curves) {
      const x = c.sx[nearest(c.sx, px)];
      if (gx === null || Math.abs(x - px) < Math.abs(gx - px)) gx = x;
    }
    const rows = [];
    for (const c of chart.curves) {
      const j = nearest(c.sx, gx);
      const spacing = c.sx.length > 1 ? chart.w / (c.sx.length - 1) : chart.w;
      const near = Math.abs(c.sx[j] - gx) <= Math.max(3, spacing / 2);
      c.dot.style.display = near ? '' : 'none';
      if (!near) continue;
      c.dot.setAttribute('cx', c.sx[j].toFixed(1));
      c.dot.setAttribute('cy', toY(chart, c.shown[j]).toFixed(1));
      const smooth = c.shown[j] !== c.ys[j] ? ` <span class="smoothed">(smoothed ${esc(precise(c.shown[j]))})</span>` : '';
      rows.push(`<div><span class="swatch" style="background:${esc(c.color)}"></span>${esc(c.label)}: ` +
        `<b>${esc(precise(c.ys[j]))}</b>${smooth}</div>`);
    }
    chart.guide.setAttribute('x1', gx.toFixed(1));
    chart.guide.setAttribute('x2', gx.toFixed(1));
    chart.guide.style.display = '';
    const xValue = chart.x0 + ((gx - chart.left) / chart.w) * (chart.x1 - chart.x0);
    tip.innerHTML = `<div class="x">${esc(compact(xValue))} ${esc(chart.svg.dataset.xLabel || '')}</div>${rows.join('')}`;
    tip.hidden = false;
    const left = e.pageX + 16 + tip.offsetWidth > window.scrollX + document.documentElement.clientWidth
      ? e.pageX - 16 - tip.offsetWidth : e.pageX + 16;
    tip.style.left = `${left}px`;
    tip.style.top = `${e.pageY + 12}px`;
  }

  function leave(chart) {
    chart.guide.style.display = 'none';
    for (const c of chart.curves) c.dot.style.display = 'none';
    tip.hidden = true;
  }

  const charts = [...document.querySelectorAll('svg.chart[data-box]')].map(setup);
  slider.addEventListener('input', applySmoothing);
  applySmoothing();
  window.reportCharts = charts;
})();
