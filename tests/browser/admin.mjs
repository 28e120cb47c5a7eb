// Browser tests of the export, admin, scheme and public pages (issue 9), called from run.mjs
// with its helpers. A researcher downloads an export from /export and `tellestrek verify`
// (the real binary) accepts the file; an admin creates and revokes an invite, and the revoked
// link signs nobody in; axe-core finds no serious or critical violation on /export, /admin,
// the scheme page and the public page in both languages at 390 and 1280 px; screenshots.
import { spawnSync } from "node:child_process";
import path from "node:path";

export default async function adminTests({ origin, admin, binary, artifacts, newDevice, shot, axe, check }) {
  async function inviteAs(role, org) {
    const body = org ? { role, org } : { role };
    const res = await fetch(`${origin}/api/v1/invites`, {
      method: "POST",
      headers: { Authorization: `Bearer ${admin}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (res.status !== 201) throw new Error(`invite ${role}: ${res.status} ${await res.text()}`);
    return `${origin}${(await res.json()).path}`;
  }

  async function signInAs(viewport, role, org) {
    const device = await newDevice(viewport);
    await device.page.goto(await inviteAs(role, org));
    await device.page.locator("form[action='/invite'] button").click();
    await device.page.waitForURL((u) => !u.pathname.startsWith("/invite"));
    return device;
  }

  function verify(args) {
    const r = spawnSync(binary, ["verify", ...args], { encoding: "utf8" });
    return { code: r.status, out: `${r.stdout}${r.stderr}` };
  }

  // --- A researcher downloads JSON and CSV from /export; `tellestrek verify` accepts both.
  {
    const { context, page } = await signInAs({ width: 1280, height: 800 }, "researcher");
    check(new URL(page.url()).pathname === "/export", "a researcher's sign-in opens /export");
    const key = (await page.getByTestId("public-key").innerText()).trim();
    await page.selectOption("#org", "helse-vestfjord");
    await page.check("input[name=format][value=json]");
    let wait = page.waitForEvent("download");
    await page.getByRole("button", { name: "Last ned", exact: true }).click();
    const json = await wait;
    const jsonPath = path.join(artifacts, "export-download.json");
    await json.saveAs(jsonPath);
    let v = verify([jsonPath, "--public-key", key]);
    check(v.code === 0, `tellestrek verify accepts the JSON downloaded from /export${v.code ? ": " + v.out : ""}`);
    await page.check("input[name=format][value=csv]");
    wait = page.waitForEvent("download");
    await page.getByRole("button", { name: "Last ned", exact: true }).click();
    const csv = await wait;
    const csvPath = path.join(artifacts, "export-download.csv");
    await csv.saveAs(csvPath);
    wait = page.waitForEvent("download");
    await page.getByRole("button", { name: "Last ned signaturen til CSV-filen" }).click();
    const sig = await wait;
    const sigPath = path.join(artifacts, "export-download.csv.sig");
    await sig.saveAs(sigPath);
    v = verify([csvPath, "--signature", sigPath, "--public-key", key]);
    check(v.code === 0, `tellestrek verify accepts the CSV and its signature from /export${v.code ? ": " + v.out : ""}`);
    await context.close();
  }

  // --- An admin creates an invite on /admin, then revokes it: the link signs nobody in.
  {
    const { context, page } = await signInAs({ width: 1280, height: 800 }, "admin");
    check(new URL(page.url()).pathname === "/admin", "an admin's sign-in opens /admin");
    const ids = async () => page.$$eval("form[action='/admin/invites/revoke'] input[name=id]", (es) => es.map((e) => e.value));
    const before = await ids();
    await page.fill("#invite-name", "Kari på akutten");
    await page.selectOption("#invite-role", "supporter");
    await page.selectOption("#invite-org", "helse-vestfjord");
    await page.getByRole("button", { name: "Lag invitasjonslenke" }).click();
    const link = (await page.getByTestId("shown-once").innerText()).trim();
    check(link.startsWith(`${origin}/invite/`), "the new invite's link is shown once");
    check((await page.locator("main").innerText()).includes("Kari på akutten"), "with the name given");
    await shot(page, "admin-1280-nb-invite");
    const added = (await ids()).filter((id) => !before.includes(id));
    check(added.length === 1, "the new invite is listed");
    await page.getByRole("button", { name: `Trekk tilbake ${added[0]}` }).click();
    await page.waitForURL(/\/admin/);
    check(!(await ids()).includes(added[0]), "the revoked invite is gone from the list");
    const phone = await newDevice({ width: 390, height: 844 });
    await phone.page.goto(link);
    const answer = phone.page.waitForResponse((r) => r.url().endsWith("/invite"));
    await phone.page.locator("form[action='/invite'] button").click();
    check((await answer).status() === 410, "the revoked link signs nobody in");
    check(!(await phone.context.cookies()).some((c) => c.name === "tellestrek_session"), "no session after a revoked link");
    await phone.context.close();
    await context.close();
  }

  // --- axe and screenshots: /export, /admin, the scheme page and the public page, both
  // languages, 390 and 1280 px.
  for (const [label, viewport] of [["390", { width: 390, height: 844 }], ["1280", { width: 1280, height: 800 }]]) {
    const researcher = await signInAs(viewport, "researcher");
    const adminDev = await signInAs(viewport, "admin");
    const leader = await signInAs(viewport, "leader", "helse-vestfjord");
    const anon = await newDevice(viewport);
    const pages = [
      [researcher.page, "/export", "export"],
      [adminDev.page, "/admin", "admin"],
      [leader.page, "/scheme/helse-vestfjord", "scheme"],
      [anon.page, "/public/helse-vestfjord", "public"],
    ];
    for (const lang of ["nb", "en"]) {
      for (const [page, url, name] of pages) {
        await page.goto(`${origin}/lang/${lang}?back=${url}`);
        await page.waitForURL(`${origin}${url}`);
        check((await page.getAttribute("html", "lang")) === lang, `${name} page in ${lang} (${label} px)`);
        await axe(page, `${name} page, ${lang}, ${label} px`);
        await shot(page, `${name}-${label}-${lang}`);
      }
    }
    const footer = await leader.page.locator("footer a[href='/scheme']").count();
    check(footer === 1, `the footer links to the scheme page (${label} px)`);
    for (const d of [researcher, adminDev, leader, anon]) await d.context.close();
  }
}
