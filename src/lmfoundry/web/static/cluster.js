// The cluster page: the instance table, refreshed from /api/v1/cluster.
const root = document.getElementById("cluster");
const pollMs = Number(root.dataset.poll || 5) * 1000;
const live = document.getElementById("live");
const body = document.querySelector("#instances tbody");
const dash = (v) => (v === null || v === undefined ? "–" : String(v));
const mib = (b) => (b === null || b === undefined ? "–" : `${(b / 2 ** 20).toFixed(0)} MiB`);

function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

async function poll() {
  try {
    const answer = await fetch(root.dataset.api, { headers: { accept: "application/json" } });
    const rows = await answer.json();
    if (!answer.ok) throw new Error(rows?.error?.message || answer.statusText);
    if (rows.length) {
      body.replaceChildren(...rows.map((i) => {
        const tr = document.createElement("tr");
        for (const v of [i.id, i.model, i.state, dash(i.pid), mib(i.rss_bytes), `${i.busy} / ${dash(i.slots)}`, dash(i.queued), duration(i.uptime_seconds), String(i.restarts)]) {
          const td = document.createElement("td");
          td.textContent = v;
          tr.append(td);
        }
        return tr;
      }));
    }
    live.className = "badge ok";
    live.textContent = `live · ${new Date().toLocaleTimeString("en-GB")}`;
  } catch (exc) {
    live.className = "badge bad";
    live.textContent = `not updating: ${exc.message}`;
  }
  setTimeout(poll, pollMs);
}
poll();
