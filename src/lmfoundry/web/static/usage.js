import { barChart, legend } from "./chart.js";

const rows = JSON.parse(document.getElementById("usage-rows").textContent);
const daily = JSON.parse(document.getElementById("usage-daily").textContent);
const group = document.getElementById("group-chart").dataset.group;
const label = (r) =>
  group === "key" ? `${r.target} ${r.key}` : group === "deployment" ? `${r.target} ${r.deployment}` : String(r[group] ?? "");
const names = ["prompt tokens", "completion tokens"];
const series = (list) => [
  { name: names[0], values: list.map((r) => r.prompt_tokens) },
  { name: names[1], values: list.map((r) => r.completion_tokens) },
];
legend(document.getElementById("group-legend"), names);
legend(document.getElementById("day-legend"), names);
barChart(document.getElementById("group-chart"), { title: `Tokens by ${group}`, labels: rows.map(label), series: series(rows) });
barChart(document.getElementById("day-chart"), { title: "Tokens by day", labels: daily.map((r) => r.day), series: series(daily) });
