// Drive Debian's Chromium (headless, through playwright-core) on tests/interop/browser_page.html,
// for tests/interop/test_browser.py.
//
// Usage: node browser_upload.mjs '<json>'
//   {"chromium": "/usr/bin/chromium", "page": "http://127.0.0.1:PORT/browser_page.html",
//    "file": "/path/to/upload.bin",
//    "steps": [{"call": "tusUpload", "args": {...}}, {"reload": true}, ...]}
// A step with "call" picks the file in the page's <input type=file> (as a user would), then
// runs that page function; "reload" reloads the page (what survives is localStorage).
// Prints one JSON line per step: {"step": i, "result": ...} or {"step": i, "error": "..."}.

import { chromium } from 'playwright-core'

const opts = JSON.parse(process.argv[2])
const say = (fields) => console.log(JSON.stringify(fields))

const browser = await chromium.launch({
  executablePath: opts.chromium,
  // root in a container: Chromium's sandbox needs user namespaces it may not have
  args: ['--no-sandbox'],
})
try {
  const page = await browser.newPage()
  page.on('console', (msg) => console.error(`[page] ${msg.text()}`))
  page.on('pageerror', (err) => console.error(`[page error] ${err}`))
  await page.goto(opts.page)
  for (const [i, step] of opts.steps.entries()) {
    if (step.reload) {
      await page.reload()
      say({ step: i, result: 'reloaded' })
      continue
    }
    await page.setInputFiles('#file', opts.file)
    try {
      const result = await page.evaluate(([name, args]) => window[name](args), [step.call, step.args])
      say({ step: i, result })
    } catch (err) {
      say({ step: i, error: String(err.message ?? err) })
      process.exitCode = 1
      break
    }
  }
} finally {
  await browser.close()
}
