// Draws the page from the JSON in #data: the text coloured by a chosen trace, predictions on
// hover, connectivity on click, and a saturation plot per layer and gate.
"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const T = data.tokens.length;
let shown = null;   // {label, values (T,), gate} while colouring by a trace
let chosen = null;  // the clicked position while colouring by connectivity

function element(tag, text, parent) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

function fmt(x) {
  return x === null ? "∞" : Number(x).toPrecision(3);
}

// A gate in (0, 1): white to blue; anything else: blue (negative) to red, scaled by max |v|.
function colour(value, scale, gate) {
  if (gate) {
    const v = Math.min(Math.max(value, 0), 1);
    return `rgb(${Math.round(255 - 215 * v)}, ${Math.round(255 - 140 * v)}, 255)`;
  }
  const v = scale > 0 ? Math.min(Math.max(value / scale, -1), 1) : 0;
  const fade = Math.round(255 * (1 - Math.abs(v)));
  return v >= 0 ? `rgb(255, ${fade}, ${fade})` : `rgb(${fade}, ${fade}, 255)`;
}

function header() {
  const head = document.getElementById("header");
  element("h1", `What a ${data.cell} does on a text (layer ${data.layer} of ${data.num_layers})`, head);
  const table = element("table", undefined, head);
  for (const [label, value] of data.description) {
    const row = element("tr", undefined, table);
    element("td", label, row);
    element("td", value, row);
  }
  for (const note of data.notes) element("p", note, head).className = "note";
}

function controls() {
  const box = document.getElementById("controls");
  element("label", "colour by ", box);
  const select = element("select", undefined, box);
  select.id = "show";
  for (const spec of data.specs) {
    const option = element("option", `mean ${spec.name} over the layer's units`, select);
    option.value = "mean:" + spec.name;
  }
  data.units.order.forEach((unit, rank) => {
    const option = element("option", `unit ${unit} of H (std ${fmt(data.units.std[rank])})`, select);
    option.value = "unit:" + unit;
  });
  select.addEventListener("change", () => show(select.value));
  const clear = element("button", "clear connectivity", box);
  clear.addEventListener("click", () => show(select.value));
  element("span", "", box).id = "legend";
}

function show(key) {
  chosen = null;
  const [kind, name] = key.split(":");
  if (kind === "mean") {
    const spec = data.specs.find((s) => s.name === name);
    shown = {label: `mean ${name}`, values: data.means[name], gate: spec.gate};
  } else {
    shown = {label: `unit ${name} of H`, values: data.units.values[Number(name)], gate: false};
  }
  const scale = Math.max(...shown.values.map(Math.abs));
  const lo = Math.min(...shown.values), hi = Math.max(...shown.values);
  // A gate is stretched over the range it takes on this text: a 0.42 … 0.49 swing shows.
  const stretch = (v) => (hi > lo ? (v - lo) / (hi - lo) : 0.5);
  spans().forEach((span, t) => {
    span.className = data.ids[t] === 0 ? "unknown" : "";
    const v = shown.values[t];
    span.style.background = shown.gate ? colour(stretch(v), 0, true) : colour(v, scale, false);
  });
  document.getElementById("legend").textContent = shown.gate
    ? `${shown.label}: white ${fmt(lo)} … blue ${fmt(hi)} (the range on this text, in (0, 1))`
    : `${shown.label}: blue −${fmt(scale)} … white 0 … red +${fmt(scale)}`;
}

function spans() {
  return Array.from(document.querySelectorAll("#text span"));
}

function connect(t) {
  if (t >= T - 1) return;  // the last token predicts nothing in the text
  chosen = t;
  const row = data.connectivity[t];
  const top = Math.max(...row);
  spans().forEach((span, s) => {
    span.className = s === t ? "chosen" : s > t ? "after" : "";
    span.style.background = s <= t ? colour(top > 0 ? row[s] / top : 0, 0, true) : "none";
  });
  document.getElementById("legend").textContent =
    `connectivity of the prediction at ${t}: ‖∂ log p(next) / ∂ input‖, white 0 … blue ${fmt(top)}`;
}

function describe(t) {
  const token = JSON.stringify(data.tokens[t]);
  const lines = [`position ${t}: ${token}`];
  if (chosen !== null && t <= chosen) {
    lines.push(`connectivity to the prediction at ${chosen}: ${fmt(data.connectivity[chosen][t])}`);
  }
  lines.push(`${shown.label}: ${fmt(shown.values[t])}`);
  lines.push("next-token predictions:");
  for (const [name, p] of data.top[t]) lines.push(`  ${JSON.stringify(name).padEnd(9)} ${p.toFixed(4)}`);
  if (t < T - 1) {
    lines.push(`loss of the actual next ${JSON.stringify(data.tokens[t + 1])}: ${fmt(data.loss[t])} nats`);
  }
  document.getElementById("info").textContent = lines.join("\n");
}

function text() {
  const box = document.getElementById("text");
  data.tokens.forEach((token, t) => {
    if (t > 0 && data.joiner) box.appendChild(document.createTextNode(data.joiner));
    const span = element("span", token, box);
    span.addEventListener("mouseover", () => describe(t));
    span.addEventListener("click", () => connect(t));
  });
}

function meanings() {
  const box = document.getElementById("meanings");
  element("h2", "What this shows", box);
  const list = element("dl", undefined, box);
  for (const spec of data.specs) {
    element("dt", spec.name, list);
    const constant = spec.constant === null ? "" : ` (ablated: always ${spec.constant})`;
    element("dd", spec.meaning + constant, list);
  }
}

// Karpathy et al. (2015): per unit, the fraction of steps left-saturated (x) and
// right-saturated (y); the diagonal x + y = 1 is a unit always saturated one way or the other.
function saturationPlots() {
  const box = document.getElementById("saturation");
  const gates = Object.entries(data.saturation.gates);
  const [low, high] = data.saturation.thresholds;
  element("h2", "Gate saturation", box);
  if (gates.length === 0) {
    element("p", "This model has no learned gates, so nothing saturates: only its units are shown.", box);
    return;
  }
  for (const [name, fractions] of gates) {
    fractions.low.forEach((row, layer) => {
      const figure = element("figure", undefined, box);
      const canvas = element("canvas", undefined, figure);
      canvas.width = 220; canvas.height = 220;
      element("figcaption", `${name}, layer ${layer}: x = fraction < ${low}, y = fraction > ${high}`, figure);
      const ctx = canvas.getContext("2d");
      const at = (x, y) => [25 + 185 * x, 195 - 185 * y];
      ctx.strokeStyle = "#999";
      ctx.strokeRect(25, 10, 185, 185);
      ctx.beginPath(); ctx.moveTo(...at(0, 1)); ctx.lineTo(...at(1, 0)); ctx.stroke();
      ctx.fillStyle = "#555"; ctx.font = "11px sans-serif";
      ctx.fillText("0", 14, 208); ctx.fillText("1", 205, 208); ctx.fillText("1", 14, 16);
      ctx.fillStyle = "rgba(30, 90, 200, 0.5)";
      row.forEach((x, unit) => {
        ctx.beginPath();
        ctx.arc(...at(x, fractions.high[layer][unit]), 3, 0, 2 * Math.PI);
        ctx.fill();
      });
    });
  }
}

header();
controls();
text();
meanings();
saturationPlots();
show(document.getElementById("show").value);
