// leapdecode's web view: streams replies from this server's own OpenAI API with
// stream_options.include_steps and shows how each token came. No framework, no build step.
//
// A step event (server/steps.py) is {step, tokens, text, accepted, drafted, alternatives}:
// tokens[:accepted] were drafted and accepted, the next is the bonus (the target's own token),
// a step with drafted 0 decoded one token plainly.
"use strict";

const config = JSON.parse(document.getElementById("config").textContent);
const $ = (id) => document.getElementById(id);
const IDLE_MS = 120000;  // a stream silent this long is given up: the view ends instead of hanging
const KINDS = {
  accepted: "accepted draft token (the target agreed)",
  bonus: "bonus token: the target's own choice after the accepted ones",
  plain: "plain decoding (no draft this step)",
};

class ReplyError extends Error {}

// ---- one streamed request ------------------------------------------------------------

function requestHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

function requestBody(method) {
  const body = {
    model: $("model").value || "leapdecode",
    method,
    max_tokens: numberOf("max-tokens"),
    temperature: numberOf("temperature"),
    top_p: numberOf("top-p"),
    stream: true,
    stream_options: { include_steps: true },
  };
  for (const [field, id] of [["seed", "seed"], ["budget", "budget"]]) {
    if ($(id).value !== "") body[field] = numberOf(id);
  }
  const prompt = $("prompt").value;
  if ($("raw").checked) body.prompt = prompt;
  else body.messages = [{ role: "user", content: prompt }];
  return body;
}

function numberOf(id) {
  const text = $(id).value.trim();
  return text === "" ? null : Number(text);  // the server says what is wrong with a bad number
}

// The server's error body ({"error": {message, code}}) as one line for the page.
async function errorOf(response) {
  let message = response.statusText;
  try {
    const body = await response.json();
    message = body.error ? `${body.error.message}` : JSON.stringify(body);
  } catch (_) { /* not JSON: keep the status text */ }
  const hint = response.status === 429 ? " (the server is busy: try again in a moment)" : "";
  return `${response.status}: ${message}${hint}`;
}

// POST the request and hand each SSE chunk to `onChunk`; resolves at [DONE], throws ReplyError
// on an HTTP error, an error event, a stream cut before [DONE] or IDLE_MS without data.
async function streamReply(body, onChunk, controller) {
  const url = $("raw").checked ? "/v1/completions" : "/v1/chat/completions";
  let idle = false;
  let timer = setTimeout(() => { idle = true; controller.abort(); }, IDLE_MS);
  const rearm = () => { clearTimeout(timer); timer = setTimeout(() => { idle = true; controller.abort(); }, IDLE_MS); };
  try {
    const response = await fetch(url, { method: "POST", headers: requestHeaders(), body: JSON.stringify(body),
                                        signal: controller.signal });
    if (!response.ok) throw new ReplyError(await errorOf(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rearm();
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ReplyError(`the server stopped the reply: ${chunk.error.message}`);
        onChunk(chunk);
      }
    }
    throw new ReplyError("the server ended the stream before the reply was finished");
  } catch (err) {
    if (err instanceof ReplyError) throw err;
    if (idle) throw new ReplyError(`no data from the server for ${IDLE_MS / 1000} s: gave up`);
    if (err.name === "AbortError") throw new ReplyError("stopped");
    throw new ReplyError(`the connection failed: ${err.message}`);  // refused, reset, cut mid-chunk
  } finally {
    clearTimeout(timer);
  }
}

// ---- a pane: one reply's tokens, figures and histogram ---------------------------------

class Pane {
  constructor(root, title) {
    this.root = root;
    root.innerHTML = "";
    const head = element("div", "pane-head", root);
    this.title = element("b", "pane-title", head);
    this.title.textContent = title;
    this.status = element("span", "status", head);
    this.output = element("div", "output", root);
    this.figures = element("div", "figures", root);
    this.hist = element("div", "hist", root);
    this.output.addEventListener("mouseover", (e) => { if (e.target.classList.contains("tok")) inspect(e.target); });
    this.reset(title);
    this.setStatus("idle", "");
  }

  reset(title) {
    this.title.textContent = title;
    this.output.textContent = "";
    this.hist.textContent = "";
    this.steps = 0;
    this.tokens = 0;
    this.histogram = [];
    this.started = performance.now();
    this.result = null;  // leapdecode's fields of the last chunk (token_ids, tau, tokens_per_s)
    this.finish = null;
    this.setStatus("streaming", "streaming…");
    this.showFigures();
  }

  setStatus(state, text) {
    this.root.dataset.state = state;
    this.status.textContent = text;
  }

  chunk(chunk) {
    const extra = chunk.leapdecode || {};
    if (extra.step) this.step(extra.step);
    const choice = chunk.choices && chunk.choices[0];
    if (choice && choice.finish_reason) {
      this.finish = choice.finish_reason;
      this.result = extra;
    }
  }

  step(step) {
    step.text.forEach((piece, i) => {
      const kind = step.drafted === 0 ? "plain" : i < step.accepted ? "accepted" : "bonus";
      const span = element("span", `tok tok-${kind}`, this.output);
      span.textContent = piece;
      span.dataset.kind = kind;
      span.dataset.step = step.step;
      span.dataset.token = step.tokens[i];
      span.dataset.piece = piece;
      span.dataset.alternatives = JSON.stringify(step.alternatives[i] || []);
      span.dataset.accepted = step.accepted;
      span.dataset.drafted = step.drafted;
      span.title = describe(span);
    });
    this.steps += 1;
    this.tokens += step.tokens.length;
    this.histogram[step.accepted] = (this.histogram[step.accepted] || 0) + 1;
    this.output.scrollTop = this.output.scrollHeight;
    this.showFigures();
  }

  showFigures() {
    const done = this.result && this.result.tokens_per_s !== undefined;
    const seconds = (performance.now() - this.started) / 1000;
    const tau = done ? this.result.tau : this.steps ? this.tokens / this.steps : null;
    const tps = done ? this.result.tokens_per_s : seconds > 0 && this.tokens ? this.tokens / seconds : null;
    this.figures.innerHTML = "";
    for (const [name, label, value] of [["tau", "tau", tau && tau.toFixed(2)], ["tps", "tokens/s", tps && tps.toFixed(1)],
                                        ["steps", "steps", this.steps], ["tokens", "tokens", this.tokens]]) {
      const item = element("span", "figure", this.figures);
      item.append(`${label} `);
      const b = element("b", "", item);
      b.dataset.figure = name;
      b.textContent = value === null || value === undefined ? "–" : String(value);
      item.append("   ");
    }
    this.showHistogram();
  }

  showHistogram() {
    this.hist.textContent = "";
    const counts = Array.from(this.histogram, (n) => n || 0);  // the array has holes
    const most = Math.max(1, ...counts);
    counts.forEach((n, k) => {
      const row = element("div", "hist-row", this.hist);
      element("span", "hist-label", row).textContent = `${k} accepted`;
      const bar = element("div", "hist-bar", row);
      bar.style.width = `${(100 * n) / most}%`;
      element("span", "hist-count", row).textContent = `${n}`;
    });
  }

  done() {
    this.setStatus("done", `done: ${this.finish || "stop"}, ${this.tokens} tokens in ${this.steps} steps`);
    this.showFigures();
  }

  fail(message) {
    this.setStatus("error", message === "stopped" ? "stopped" : "ended with an error");
    element("span", "notice", this.output).textContent = `⚠ ${message}`;
  }

  text() {
    return Array.from(this.output.querySelectorAll(".tok"), (s) => s.dataset.piece).join("");
  }
}

function element(tag, className, parent) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (parent) parent.append(node);
  return node;
}

// A token's hover text: its step, how it came, and what the draft offered at its position
// (for a bonus token: the draft tokens the target refused there).
function describe(span) {
  const offered = JSON.parse(span.dataset.alternatives).map((t) => JSON.stringify(t)).join(", ");
  const drafted = Number(span.dataset.drafted);
  let alternatives = "";
  if (drafted && span.dataset.kind === "bonus") {
    alternatives = offered ? `the target refused the draft's ${offered} here` : "the draft had nothing more here";
  } else if (drafted) {
    alternatives = `the draft also offered here: ${offered || "nothing else"}`;
  }
  return [
    `${JSON.stringify(span.dataset.piece)} (token ${span.dataset.token})`,
    `step ${span.dataset.step}: ${span.dataset.accepted} of ${drafted} draft tokens accepted`,
    KINDS[span.dataset.kind],
    alternatives,
  ].filter(Boolean).join("\n");
}

function inspect(span) {
  document.querySelectorAll(".tok.picked").forEach((s) => s.classList.remove("picked"));
  span.classList.add("picked");
  $("inspector").textContent = describe(span);
}

// ---- the page --------------------------------------------------------------------------

const panes = {};
let running = [];  // the AbortControllers of the requests in flight

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setBusy(busy) {
  document.body.dataset.state = busy ? "busy" : "idle";
  $("send").disabled = $("race").disabled = busy;
  $("stop").disabled = !busy;
}

// Stream `method`'s reply into `pane`; resolves true when it finished, false (shown) otherwise.
async function reply(pane, method) {
  const controller = new AbortController();
  running.push(controller);
  pane.reset(method);
  try {
    await streamReply(requestBody(method), (chunk) => pane.chunk(chunk), controller);
    pane.done();
    return true;
  } catch (err) {
    pane.fail(err.message);
    if (err.message !== "stopped") showError(`${method}: ${err.message}`);
    return false;
  }
}

async function send(event) {
  event.preventDefault();
  showError("");
  setBusy(true);
  await reply(panes.main, $("method").value);
  running = [];
  setBusy(false);
}

async function race() {
  const method = $("method").value;
  showError("");
  if (method === "none") {
    showError("pick a method other than none to race against none");
    return;
  }
  setBusy(true);
  $("race-view").hidden = false;
  $("race-result").textContent = "";
  const [base, fast] = [panes.none, panes.method];
  const [baseOk, fastOk] = await Promise.all([reply(base, "none"), reply(fast, method)]);
  running = [];
  if (baseOk && fastOk) showRace(base, fast);
  else $("race-result").textContent = "did not finish";
  setBusy(false);
}

function showRace(base, fast) {
  const result = $("race-result");
  result.textContent = "";
  const speedup = fast.result.tokens_per_s / base.result.tokens_per_s;
  element("span", "speedup", result).textContent = `${fast.title.textContent}: ${speedup.toFixed(2)}x the tokens/s of none   `;
  const same = JSON.stringify(base.result.token_ids) === JSON.stringify(fast.result.token_ids);
  const mark = element("span", same ? "same" : "differ", result);
  mark.id = "race-check";
  mark.textContent = same ? "✓ identical output"
    : Number($("temperature").value) > 0 ? "✗ outputs differ (sampling: each is a sample of the same distribution)"
    : "✗ outputs differ";
}

async function loadModels() {
  try {
    const response = await fetch("/v1/models", { headers: requestHeaders() });
    if (!response.ok) throw new ReplyError(await errorOf(response));
    const models = (await response.json()).data.map((m) => m.id);
    const select = $("model");
    const chosen = select.value;
    select.innerHTML = "";
    for (const id of models) element("option", "", select).textContent = id;
    if (models.includes(chosen)) select.value = chosen;
    showError("");
  } catch (err) {
    if ($("model").options.length === 0) element("option", "", $("model")).textContent = "leapdecode";
    showError(`cannot list the models: ${err.message}`);
  }
}

function start() {
  for (const name of config.methods) element("option", "", $("method")).textContent = name;
  $("method").value = config.default_method;
  panes.main = new Pane($("pane-main"), "Reply");
  panes.none = new Pane($("pane-none"), "none");
  panes.method = new Pane($("pane-method"), "method");
  $("form").addEventListener("submit", send);
  $("race").addEventListener("click", race);
  $("stop").addEventListener("click", () => running.forEach((c) => c.abort()));
  $("api-key").addEventListener("change", loadModels);
  loadModels().finally(() => setBusy(false));
}

start();
