// Chart.js, with only the parts the job page draws (bar and line charts), registered once.
import { BarController, BarElement, CategoryScale, Chart, Legend, LineController, LineElement, LinearScale, PointElement, Tooltip } from "chart.js";

Chart.register(BarController, BarElement, CategoryScale, Legend, LineController, LineElement, LinearScale, PointElement, Tooltip);
Chart.defaults.font.family = "system-ui, -apple-system, Segoe UI, Roboto, sans-serif";
Chart.defaults.animation = false; // live updates every half second; animating them only blurs the figures

const COLORS = ["#2f6fdf", "#1a9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e"];

export function barChart(canvas, { labels, datasets, yTitle, horizontal = false }) {
  return new Chart(canvas, {
    type: "bar",
    data: { labels, datasets: datasets.map((d, i) => ({ backgroundColor: d.colors ?? COLORS[i % COLORS.length], ...d })) },
    options: {
      indexAxis: horizontal ? "y" : "x",
      responsive: true,
      maintainAspectRatio: false,
      plugins: { legend: { display: datasets.length > 1 } },
      scales: { [horizontal ? "x" : "y"]: { beginAtZero: true, title: { display: Boolean(yTitle), text: yTitle } } },
    },
  });
}

export function lineChart(canvas, { xTitle, yTitle, label }) {
  return new Chart(canvas, {
    type: "line",
    data: { labels: [], datasets: [{ label, data: [], borderColor: COLORS[0], backgroundColor: COLORS[0], pointRadius: 2, tension: 0.1 }] },
    options: {
      responsive: true,
      maintainAspectRatio: false,
      plugins: { legend: { display: false } },
      scales: {
        x: { type: "linear", beginAtZero: true, title: { display: true, text: xTitle } },
        y: { beginAtZero: true, title: { display: true, text: yTitle } },
      },
    },
  });
}

export const palette = (i) => COLORS[i % COLORS.length];
