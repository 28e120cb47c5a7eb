// Browser tests of the dashboard and methods pages (issue 9), called from run.mjs with the
// running demo: a leader signs in with a token and sees the dashboard with charts, tables and
// at least one alert from the demo history; a leader of another organisation is refused;
// axe-core finds no serious or critical violation on /dashboard and /methods in both
// languages at 390 and 1280 px; screenshots of each, and of the print (yearly summary) view.

/** Creates a token of `role` for `org` with the demo's admin token. */
async function token(origin, admin, role, org) {
  const res = await fetch(`${origin}/api/v1/tokens`, {
    method: "POST",
    headers: { Authorization: `Bearer ${admin}`, "Content-Type": "application/json" },
    body: JSON.stringify({ role, org }),
  });
  if (res.status !== 201) throw new Error(`token: ${res.status} ${await res.text()}`);
  return (await res.json()).token;
}

/** Signs the page's device in with a token through the sign-in form. */
async function signIn(page, origin, secret) {
  await page.goto(`${origin}/`);
  await page.locator("#token").fill(secret);
  await page.locator("form[action='/sign-in'] button[type=submit]").click();
  await page.waitForURL((u) => !u.pathname.startsWith("/sign-in"));
}

export async function dashboardTests({ origin, admin, artifacts, newDevice, axe, shot, check }) {
  const hv = await token(origin, admin, "leader", "helse-vestfjord");
  const vk = await token(origin, admin, "leader", "vikafjord-kommune");

  // A leader of Helse Vestfjord: charts, tables, an alert; another organisation refused.
  {
    const { context, page } = await newDevice({ width: 1280, height: 800 });
    await signIn(page, origin, hv);
    check(new URL(page.url()).pathname === "/dashboard", "a leader lands on the dashboard after sign-in");
    await page.goto(`${origin}/dashboard`);
    const charts = await page.locator("svg[role=img]").count();
    const titled = await page.$$eval("svg[role=img]", (svgs) => svgs.every((s) => {
      const ids = (s.getAttribute("aria-labelledby") || "").split(" ");
      return ids.length === 2 && ids.every((id) => document.getElementById(id)?.textContent.trim());
    }));
    check(charts >= 2 && titled, `the dashboard has titled, described charts (${charts})`);
    const drawn = await page.$$eval("svg[role=img]", (svgs) => svgs.every((s) => s.getBoundingClientRect().height > 50
      && s.querySelectorAll("circle, line, polyline, polygon, rect").length > 5));
    check(drawn, "the charts are drawn (SVG presentation attributes pass the CSP)");
    const tables = await page.locator("table").count();
    const cells = await page.locator("table td", { hasText: "ca. " }).count();
    check(tables >= 2 && cells > 0, `tables with the numbers in words (${tables} tables, ${cells} cells)`);
    const alerts = await page.locator(".ts-alert").count();
    check(alerts >= 1, `at least one alert from the demo history (${alerts})`);
    const text = await page.locator("main").innerText();
    check((text.match(/95 %/g) || []).length === 1, "\"95 %\" is said once on the page");
    check(!text.includes("Belastning på støttepersonene"), "no supporter load for a leader");
    await axe(page, "dashboard, nb, 1280 px");
    await shot(page, "dashboard-1280-nb");
    await page.evaluate(() => document.getElementById("h-uptake").scrollIntoView());
    await page.screenshot({ path: `${artifacts}/dashboard-1280-nb-screen.png` });
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.emulateMedia({ media: "print" });
    await shot(page, "dashboard-1280-nb-print");
    await page.emulateMedia({ media: "screen" });
    // The year before, released in full: the breakdowns, outreach share and hours.
    await page.getByRole("link", { name: "Vis året 2025" }).click();
    await page.waitForURL(`${origin}/dashboard?year=2025`);
    const yearCharts = await page.locator("svg[role=img]").count();
    check(yearCharts >= 6, `the year before has the breakdown charts too (${yearCharts} charts)`);
    const dotted = await page.$$eval("svg[role=img]", (svgs) => svgs.every((s) => s.querySelectorAll("circle").length > 0));
    check(dotted, "every chart of the year draws its estimates");
    await axe(page, "dashboard 2025, nb, 1280 px");
    await shot(page, "dashboard-1280-nb-2025");
    const refused = await page.goto(`${origin}/dashboard?org=vikafjord-kommune`);
    check(refused.status() === 403, "a leader cannot open another organisation's dashboard (403)");
    await shot(page, "dashboard-1280-nb-refused");
    await context.close();
  }
  {
    const { context, page } = await newDevice({ width: 390, height: 844 });
    await signIn(page, origin, vk);
    const refused = await page.goto(`${origin}/dashboard?org=helse-vestfjord`);
    check(refused.status() === 403, "a leader of Vikafjord is refused Helse Vestfjord's dashboard");
    // Nor its API, called with the session and its form token as the pages' scripts would.
    const api = await page.evaluate(async () => {
      const csrf = document.querySelector("input[name=csrf]").value;
      return (await fetch("/api/v1/dashboard?org=helse-vestfjord", { headers: { "X-CSRF-Token": csrf } })).status;
    });
    check(api === 403, `nor its API (${api})`);
    await context.close();
  }

  // Both languages, both widths: axe and screenshots of /dashboard and /methods.
  for (const [label, viewport] of [["390", { width: 390, height: 844 }], ["1280", { width: 1280, height: 800 }]]) {
    const { context, page } = await newDevice(viewport);
    await signIn(page, origin, hv);
    for (const lang of ["nb", "en"]) {
      await page.goto(`${origin}/lang/${lang}?back=/dashboard`);
      await page.waitForURL(`${origin}/dashboard`);
      check((await page.getAttribute("html", "lang")) === lang, `dashboard in ${lang} (${label} px)`);
      await axe(page, `dashboard, ${lang}, ${label} px`);
      await shot(page, `dashboard-${label}-${lang}`);
      await page.goto(`${origin}/methods`);
      const rules = await page.locator("tbody tr").count();
      check(rules === 4, `methods page lists the 4 alert rules (${lang}, ${label} px)`);
      await axe(page, `methods, ${lang}, ${label} px`);
      await shot(page, `methods-${label}-${lang}`);
    }
    await context.close();
  }
}
