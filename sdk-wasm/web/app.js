// The dev page: cluster state, live, and a key browser, all through the JS SDK.
import { Client, getString } from './js/index.js';

const $ = (id) => document.getElementById(id);
const text = (bytes) => {
  const s = getString(bytes);
  return /^[\x20-\x7e]*$/.test(s) ? s : `0x${[...bytes].map((b) => b.toString(16).padStart(2, '0')).join('')}`;
};
const status = (message, error = false) => {
  $('status').textContent = message;
  $('status').className = error ? 'error' : '';
};

const config = await (await fetch('./web.json')).json();
const db = await Client.connect(config);
$('conn').textContent = `connected over ${db.transport === 'webtransport' ? 'WebTransport' : 'WebSocket'} (PD ${config.pd.map((u) => u.replace(/^ws:\/\//, '')).join(', ')})`;

async function refresh() {
  try {
    const { nodes, regions } = await db.clusterStatus({ timeoutMs: 2000 });
    $('nodes').tBodies[0].innerHTML = nodes
      .map((n) => `<tr data-node="${n.id}"><td>${n.id}</td><td>${n.addr}</td><td class="${n.up ? 'up' : 'down'}">${n.up ? 'up' : 'down'}</td><td>${n.regions}</td><td>${n.leaders}</td></tr>`)
      .join('');
    $('regions').tBodies[0].innerHTML = regions
      .map((r) => {
        const range = `[${r.start.length ? text(r.start) : '−∞'}, ${r.end.length ? text(r.end) : '+∞'})`;
        const peers = r.nodes.map((n) => (n === r.leader ? `<span class="leader">${n}</span>` : n)).join(' ');
        return `<tr data-region="${r.id}"><td>${r.id}</td><td>${escape(range)}</td><td>${peers}</td><td>${r.keys}</td></tr>`;
      })
      .join('');
  } catch (e) {
    status(`cluster status: ${e.message}`, true);
  }
}
const escape = (s) => s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);

let scan = null;
function showRows(rows, append) {
  const body = rows.map(([k, v]) => `<tr><td>${escape(text(k))}</td><td>${escape(text(v))}</td></tr>`).join('');
  if (append) $('rows').tBodies[0].insertAdjacentHTML('beforeend', body);
  else $('rows').tBodies[0].innerHTML = body;
}
async function nextPage(append) {
  const size = Math.max(1, Number($('pageSize').value) || 20);
  const rows = [];
  while (rows.length < size) {
    const { value, done } = await scan.next();
    if (done) {
      scan = null;
      break;
    }
    rows.push(value);
  }
  showRows(rows, append);
  $('more').disabled = scan === null;
  status(`${rows.length} rows${scan ? '; more to come' : ''}`);
}

$('kv').addEventListener('submit', (e) => e.preventDefault());
for (const button of $('kv').querySelectorAll('button')) {
  button.addEventListener('click', async (e) => {
    e.preventDefault();
    const key = $('key').value;
    if (!key) return status('a key is needed', true);
    try {
      const op = button.dataset.op;
      if (op === 'put') {
        await db.put(key, $('value').value);
        status(`put ${key}`);
      } else if (op === 'get') {
        const value = await db.get(key);
        status(value === null ? `${key} is absent` : `${key} = ${text(value)}`);
      } else {
        status((await db.delete(key)) ? `deleted ${key}` : `${key} was absent`);
      }
    } catch (err) {
      status(`${err.code ?? 'error'}: ${err.message}`, true);
    }
  });
}
$('scan').addEventListener('submit', async (e) => {
  e.preventDefault();
  try {
    scan = db.scan($('start').value, $('end').value, { pageSize: Math.max(1, Number($('pageSize').value) || 20) });
    await nextPage(false);
  } catch (err) {
    status(`${err.code ?? 'error'}: ${err.message}`, true);
  }
});
$('more').addEventListener('click', () => scan && nextPage(true).catch((err) => status(err.message, true)));

await refresh();
setInterval(refresh, 1000);
document.body.dataset.ready = 'true';
