// Browser tests of the web pages (issue 9). See tests/browser/run.
// A supporter opens an invite link on a phone-sized window and logs contacts in few taps,
// with and without JavaScript; a tick made offline is sent when the connection returns and
// counted once; axe-core finds no serious or critical violation on the sign-in and tick
// pages in both languages at 390 and 1280 px; no page requests another host.
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";

const [binary, chrome, artifacts] = process.argv.slice(2);
const require = createRequire(import.meta.url);
const axeSource = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const PHONE = { width: 390, height: 844 };
const DESKTOP = { width: 1280, height: 800 };
let failures = 0;

function check(ok, what) {
  if (ok) {
    console.log(`ok   ${what}`);
  } else {
    failures++;
    console.log(`FAIL ${what}`);
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Starts the binary with `args` and waits until it listens; returns it and its output. */
async function start(args) {
  const child = spawn(binary, args, { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`demo did not start:\n${out}`)), 120000);
    child.stdout.on("data", (d) => {
      out += d;
      if (out.includes("listening on")) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on("exit", (code) => reject(new Error(`${args[0]} exited ${code}:\n${out}`)));
  });
  return { child, out };
}

function stop(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.on("exit", () => resolve());
    child.kill("SIGTERM");
  });
}

async function startDemo(port) {
  const { child, out } = await start(["demo", "--listen", `127.0.0.1:${port}`, "--data", dataDir]);
  const admin = out.match(/^\s+admin\s+(\S+)\s*$/m);
  if (!admin) throw new Error(`no admin token in the demo's output:\n${out}`);
  return { child, admin: admin[1] };
}

const workDir = fs.mkdtempSync(path.join(process.env.TMPDIR || "/tmp", "tellestrek-browser-"));
const dataDir = path.join(workDir, "data");
const port = await freePort();
const origin = `http://127.0.0.1:${port}`;
let demo = await startDemo(port);
const foreign = [];

async function invite(name, unit = "akuttmottak") {
  const res = await fetch(`${origin}/api/v1/invites`, {
    method: "POST",
    headers: { Authorization: `Bearer ${demo.admin}`, "Content-Type": "application/json" },
    // The coordinator names the unit the supporter belongs to: it is preselected.
    body: JSON.stringify({ org: "helse-vestfjord", name, unit }),
  });
  if (res.status !== 201) throw new Error(`invite: ${res.status} ${await res.text()}`);
  return `${origin}${(await res.json()).path}`;
}

const browser = await chromium.launch({
  executablePath: chrome,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run"],
});

async function newDevice(viewport, javaScriptEnabled = true) {
  const context = await browser.newContext({ viewport, javaScriptEnabled, locale: "nb-NO" });
  context.on("request", (req) => {
    const u = new URL(req.url());
    if (u.origin !== origin && u.protocol !== "data:") foreign.push(req.url());
  });
  const page = await context.newPage();
  return { context, page };
}

async function shot(page, name) {
  // WCAG 1.4.10 (reflow): nothing but a table or code block that scrolls in its own box may be
  // wider than the window, so no page scrolls sideways on a phone.
  const wide = await page.evaluate(() => {
    const w = document.documentElement.clientWidth;
    if (document.documentElement.scrollWidth <= w) return [];
    // The innermost elements whose content is wider than they are (a box, or a long word).
    const over = [...document.querySelectorAll("body *")].filter((e) =>
      e.getBoundingClientRect().right > w + 1 || (e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1
        && getComputedStyle(e).overflowX === "visible"));
    const innermost = over.filter((e) => !over.some((o) => o !== e && e.contains(o)));
    const name = (e) => `${e.tagName.toLowerCase()}${e.className ? "." + String(e.className).split(" ").join(".") : ""}`;
    return [`page ${document.documentElement.scrollWidth} px wide`]
      .concat(innermost.slice(0, 5).map((e) => `${name(e)} "${e.textContent.trim().slice(0, 30)}"`));
  });
  check(wide.length === 0, `${name}: no sideways scrolling${wide.length ? ": " + wide.join(", ") : ""}`);
  await page.screenshot({ path: path.join(artifacts, `${name}.png`), fullPage: true });
}

async function axe(page, what) {
  // Evaluated through the DevTools protocol, so the page's CSP (no inline script) stays on.
  await page.evaluate(axeSource);
  const result = await page.evaluate(() =>
    window.axe.run(document, { runOnly: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"] }));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  for (const v of bad) {
    console.log(`     ${v.id} (${v.impact}): ${v.help}: ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
  }
  check(bad.length === 0, `axe: no serious or critical violation on ${what}`);
}

/** Answers the questions nothing is preselected for (first value each); returns the taps. */
async function answerOpen(page) {
  const names = await page.$$eval("#tick-form input[type=radio]", (rs) =>
    [...new Set(rs.map((r) => r.name))].filter((n) =>
      !rs.some((r) => r.name === n && r.checked)));
  for (const name of names) {
    await page.locator(`input[name="${name}"]`).first().click();
  }
  return names.length;
}

/** Chooses the first unit and the first value of every question; returns the taps. */
async function chooseAll(page) {
  const names = await page.$$eval("#tick-form input[type=radio]", (rs) => [...new Set(rs.map((r) => r.name))]);
  let taps = 0;
  for (const name of names) {
    await page.locator(`input[name="${name}"]`).first().click();
    taps++;
  }
  return taps;
}

try {
  // --- A phone with JavaScript: invite link, first tick, then repeated ticks in few taps.
  {
    const { context, page } = await newDevice(PHONE);
    await page.goto(await invite("Kari"));
    await shot(page, "invite-390-nb");
    await page.getByRole("button", { name: "Logg inn på denne enheten" }).click();
    await page.waitForURL(`${origin}/tick`);
    check(true, "an invite link signs the phone in and opens the tick page");
    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === "tellestrek_session");
    check(session && session.httpOnly && session.sameSite === "Strict", "session cookie HttpOnly, SameSite=Strict");
    const noteFirst = await page.evaluate(() => {
      const note = document.querySelector(".ts-note");
      const form = document.getElementById("tick-form");
      return !!note && !!(note.compareDocumentPosition(form) & Node.DOCUMENT_POSITION_FOLLOWING);
    });
    check(noteFirst, "the note on what is never stored comes before the form");
    await axe(page, "tick page, nb, 390 px");
    await shot(page, "tick-390-nb");
    await page.screenshot({ path: path.join(artifacts, "tick-390-nb-screen.png") });
    // The unit given at invite and the policy's usual answers are preselected: the first
    // contact takes a profession, a trigger and "Registrer".
    let taps = await answerOpen(page);
    await page.getByRole("button", { name: "Registrer", exact: true }).click();
    taps++;
    await page.waitForURL(/\/tick\/done/);
    check(taps <= 3, `the first contact on a new phone with JavaScript: ${taps} taps`);
    await shot(page, "done-390-nb");
    const doneText = await page.locator("main").innerText();
    check(!/\d/.test(doneText), "the confirmation shows no number");
    // The same kind of contact again, from the page opened anew: answers remembered on the
    // device are preselected, so it is one tap.
    await page.goto(`${origin}/tick`);
    taps = 0;
    await page.getByRole("button", { name: "Registrer", exact: true }).click();
    taps++;
    await page.waitForURL(/\/tick\/done/);
    check(taps <= 3, `a repeated contact with JavaScript: ${taps} tap(s)`);
    // A different contact: change one answer and submit.
    await page.goto(`${origin}/tick`);
    taps = 0;
    await page.locator('input[name="dim.kanal"]').nth(1).click();
    taps++;
    await page.getByRole("button", { name: "Registrer", exact: true }).click();
    taps++;
    await page.waitForURL(/\/tick\/done/);
    check(taps <= 3, `a different contact with JavaScript: ${taps} taps`);
    const stored = await page.evaluate(() => localStorage.getItem("tellestrek.usual"));
    check(stored && stored.includes("akuttmottak"), "the usual answers are kept on the device");
    await context.close();
  }

  // --- A phone without JavaScript: the same with plain form posts.
  {
    const { context, page } = await newDevice(PHONE, false);
    await page.goto(await invite("Ola"));
    await page.getByRole("button", { name: "Logg inn på denne enheten" }).click();
    await page.waitForURL(`${origin}/tick`);
    let first = await answerOpen(page);
    // The confirmation is the answer to the post itself (no URL carries the answers).
    await Promise.all([
      page.waitForEvent("load"),
      page.getByRole("button", { name: "Registrer", exact: true }).click(),
    ]);
    first++;
    check(await page.getByRole("status").isVisible(), "without JavaScript: a tick by a plain form post");
    check(first <= 3, `the first contact on a new phone without JavaScript: ${first} taps`);
    check(!page.url().includes("?"), "without JavaScript: no answers in the URL");
    let taps = 0;
    await Promise.all([
      page.waitForEvent("load"),
      page.getByRole("button", { name: "Registrer en lik samtale til" }).click(),
    ]);
    taps++;
    check(await page.getByRole("status").isVisible(), "without JavaScript: confirmed again");
    check(taps <= 3, `without JavaScript: the same kind again in ${taps} tap`);
    taps = 0;
    await Promise.all([
      page.waitForEvent("load"),
      page.getByRole("button", { name: "Registrer en annen samtale" }).click(),
    ]);
    taps++;
    await page.locator('input[name="dim.kanal"]').nth(1).click();
    taps++;
    await Promise.all([
      page.waitForEvent("load"),
      page.getByRole("button", { name: "Registrer", exact: true }).click(),
    ]);
    taps++;
    check(await page.getByRole("status").isVisible(), "without JavaScript: the different contact confirmed");
    check(taps <= 3, `without JavaScript: a different contact in ${taps} taps`);
    await shot(page, "done-390-nb-nojs");
    await context.close();
  }

  // --- Offline: the tick is queued on the device and sent once the connection returns.
  {
    const { context, page } = await newDevice(PHONE);
    await page.goto(await invite("Per"));
    await page.getByRole("button", { name: "Logg inn på denne enheten" }).click();
    await page.waitForURL(`${origin}/tick`);
    await chooseAll(page);
    const answers = [];
    page.on("response", async (r) => {
      if (r.url().endsWith("/api/v1/ticks")) {
        answers.push({ status: r.status(), replayed: r.headers()["idempotent-replayed"] });
      }
    });
    await context.setOffline(true);
    await page.getByRole("button", { name: "Registrer", exact: true }).click();
    await page.getByText("Ingen forbindelse med tjenesten").waitFor();
    await shot(page, "tick-390-nb-offline");
    const queued = await page.evaluate(() => JSON.parse(localStorage.getItem("tellestrek.queue")));
    check(queued.length === 1 && /^\d{4}-\d{2}$/.test(queued[0].body.period), "the offline tick is queued with its period");
    await context.setOffline(false);
    await page.getByText("er nå sendt").waitFor({ timeout: 20000 });
    const left = await page.evaluate(() => JSON.parse(localStorage.getItem("tellestrek.queue")));
    check(answers.length === 1 && answers[0].status === 201 && answers[0].replayed === "false" && left.length === 0,
      "the queued tick is sent when the connection returns and counted");
    // A resend of the same queued tick (a flaky connection) is answered as a replay: counted once.
    const again = await page.evaluate(async (item) => {
      const csrf = document.querySelector("input[name=csrf]").value;
      const r = await fetch("/api/v1/ticks", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Idempotency-Key": item.key, "X-CSRF-Token": csrf },
        body: JSON.stringify(item.body),
      });
      return { status: r.status, replayed: r.headers.get("idempotent-replayed") };
    }, queued[0]);
    check(again.status === 201 && again.replayed === "true", "sent again, it is counted once (a replay)");
    await context.close();
  }

  // --- The server goes away: the tick is queued and sent when the server is back (a restart
  // of the same data directory), counted once.
  {
    const { context, page } = await newDevice(PHONE);
    await page.goto(await invite("Liv"));
    await page.getByRole("button", { name: "Logg inn på denne enheten" }).click();
    await page.waitForURL(`${origin}/tick`);
    await chooseAll(page);
    const answers = [];
    page.on("response", (r) => {
      if (r.url().endsWith("/api/v1/ticks")) {
        answers.push({ status: r.status(), replayed: r.headers()["idempotent-replayed"] });
      }
    });
    await stop(demo.child);
    await page.getByRole("button", { name: "Registrer", exact: true }).click();
    await page.getByText("Ingen forbindelse med tjenesten").waitFor();
    const queued = await page.evaluate(() => JSON.parse(localStorage.getItem("tellestrek.queue")));
    check(queued.length === 1, "with the server down, the tick is queued on the device");
    const served = await start(["serve", "--data", dataDir, "--policy", "policy/default.toml",
      "--listen", `127.0.0.1:${port}`]);
    demo = { ...demo, child: served.child };
    await page.getByText("er nå sendt").waitFor({ timeout: 30000 });
    const left = await page.evaluate(() => JSON.parse(localStorage.getItem("tellestrek.queue")));
    const first = answers.filter((a) => a.status === 201);
    check(first.length === 1 && first[0].replayed === "false" && left.length === 0,
      "the queued tick is sent when the server is back, and counted");
    const again = await page.evaluate(async (item) => {
      const csrf = document.querySelector("input[name=csrf]").value;
      const r = await fetch("/api/v1/ticks", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Idempotency-Key": item.key, "X-CSRF-Token": csrf },
        body: JSON.stringify(item.body),
      });
      return { status: r.status, replayed: r.headers.get("idempotent-replayed") };
    }, queued[0]);
    check(again.status === 201 && again.replayed === "true", "sent again after the restart, it is counted once");
    await context.close();
  }

  // --- Sign-in and tick pages in both languages at both widths: axe and screenshots.
  for (const [label, viewport] of [["390", PHONE], ["1280", DESKTOP]]) {
    const { context, page } = await newDevice(viewport);
    await page.goto(`${origin}/`);
    await axe(page, `sign-in page, nb, ${label} px`);
    await shot(page, `signin-${label}-nb`);
    await page.getByRole("link", { name: "In English" }).click();
    await page.waitForURL(`${origin}/`);
    check((await page.getAttribute("html", "lang")) === "en", `the language switch (${label} px)`);
    await axe(page, `sign-in page, en, ${label} px`);
    await shot(page, `signin-${label}-en`);
    const used = await invite(`Desk ${label}`);
    await page.goto(used);
    await axe(page, `invite page, en, ${label} px`);
    await shot(page, `invite-${label}-en`);
    await page.getByRole("button", { name: "Sign in on this device" }).click();
    await page.waitForURL(`${origin}/tick`);
    check((await page.getAttribute("html", "lang")) === "en", `the language is remembered (${label} px)`);
    await axe(page, `tick page, en, ${label} px`);
    await shot(page, `tick-${label}-en`);
    // The confirmation, in both languages.
    await chooseAll(page);
    await page.getByRole("button", { name: "Log", exact: true }).click();
    await page.waitForURL(/\/tick\/done/);
    await axe(page, `confirmation page, en, ${label} px`);
    await shot(page, `done-${label}-en`);
    await page.getByRole("link", { name: "På norsk" }).click();
    await page.waitForLoadState("load");
    await axe(page, `confirmation page, nb, ${label} px`);
    await shot(page, `done-${label}-nb`);
    await page.goto(`${origin}/tick`);
    await axe(page, `tick page, nb, ${label} px`);
    await shot(page, `tick-${label}-nb`);
    await page.goto(await invite(`Desk nb ${label}`));
    await axe(page, `invite page, nb, ${label} px`);
    await shot(page, `invite-${label}-nb`);
    // The message pages: a page that does not exist (404), a page of another role (403), an
    // invite link already used (410); each in both languages.
    for (const lang of ["nb", "en"]) {
      if (lang === "en") {
        await page.goto(`${origin}/tick`);
        await page.getByRole("link", { name: "In English" }).click();
        await page.waitForLoadState("load");
      }
      for (const [what, url, status] of [
        ["not found", `${origin}/finnes-ikke`, 404],
        ["refused", `${origin}/export`, 403],
        ["used invite", used, 410],
      ]) {
        let res = await page.goto(url);
        if (status === 410) {
          // Opening a link shows its page (a link preview must not use it up); the button
          // then says it has been used.
          [res] = await Promise.all([
            page.waitForResponse((r) => r.request().method() === "POST"),
            page.getByRole("button", { name: lang === "nb" ? "Logg inn på denne enheten" : "Sign in on this device" }).click(),
          ]);
          await page.waitForLoadState("load");
        }
        check(res.status() === status, `${what} page answers ${status} (${lang}, ${label} px)`);
        check((await page.getAttribute("html", "lang")) === lang, `${what} page in ${lang}`);
        await axe(page, `${what} page, ${lang}, ${label} px`);
        await shot(page, `error-${status}-${label}-${lang}`);
      }
    }
    await context.close();
  }

  await (await import("./admin.mjs")).default({ origin, admin: demo.admin, binary, artifacts, newDevice, shot, axe, check });

  await (await import("./dashboard.mjs")).dashboardTests({ origin, admin: demo.admin, artifacts, newDevice, axe, shot, check });
  check(foreign.length === 0, `no request to another host${foreign.length ? ": " + foreign.join(", ") : ""}`);
} catch (e) {
  failures++;
  console.log(`FAIL ${e.stack || e}`);
} finally {
  await browser.close();
  await stop(demo.child);
  fs.rmSync(workDir, { recursive: true, force: true });
}
console.log(failures === 0 ? "browser tests: all passed" : `browser tests: ${failures} failed`);
process.exit(failures === 0 ? 0 : 1);
