import fs from 'node:fs/promises'
import { createRequire } from 'node:module'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import type { BrowserContext, Page } from 'playwright-core'

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
const require = createRequire(import.meta.url)

/** Debian's chromium (apt; .ci/run installs it). VIGIL_TEST_CHROMIUM overrides. */
export const chromiumPath = process.env.VIGIL_TEST_CHROMIUM ?? '/usr/bin/chromium'

/** Where every run's screenshots go (gitignored); with VIGIL_UPDATE_SCREENSHOTS=1 they are also copied to docs/screenshots/. */
export const artifactsDir = path.join(root, 'test-artifacts', 'web')
const docsScreenshots = path.join(root, 'docs', 'screenshots')

export interface TestBrowser {
  context: BrowserContext
  page: Page
  /** Console errors and CSP reports the pages logged. */
  consoleErrors: string[]
  close (): Promise<void>
}

/** A headless Chromium with a fresh profile (nothing from another run), one page. */
export async function openBrowser (viewport = { width: 1280, height: 800 }): Promise<TestBrowser> {
  const profile = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-chromium-'))
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    viewport,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--autoplay-policy=no-user-gesture-required']
  })
  const page = context.pages()[0] ?? await context.newPage()
  const consoleErrors: string[] = []
  page.on('console', (message) => { if (message.type() === 'error') consoleErrors.push(message.text()) })
  page.on('pageerror', (err) => consoleErrors.push(`pageerror: ${err.message}`))
  return {
    context,
    page,
    consoleErrors,
    async close () {
      await context.close()
      await fs.rm(profile, { recursive: true, force: true })
    }
  }
}

const axeSource = await fs.readFile(require.resolve('axe-core/axe.min.js'), 'utf8')

export interface AxeViolation { id: string, impact: string | null, help: string, nodes: number, targets: string[] }

/**
 * Runs axe-core in the page (WCAG 2.1 A/AA rules) and returns the serious and critical
 * violations. The source goes in through DevTools evaluation, which the page's CSP does not
 * govern, so the test does not loosen the policy it checks.
 */
export async function seriousAxeViolations (page: Page): Promise<AxeViolation[]> {
  await page.evaluate(`${axeSource}\n;undefined`)
  const violations = await page.evaluate(async () => {
    const axe = (globalThis as unknown as { axe: { run: (ctx: unknown, opts: unknown) => Promise<{ violations: Array<{ id: string, impact: string | null, help: string, nodes: Array<{ target: string[] }> }> }> } }).axe
    const result = await axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] } })
    return result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length, targets: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) }))
  })
  return violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
}

/** Saves a full-page screenshot as test-artifacts/web/<name>.png (and docs/screenshots/ when asked). */
export async function screenshot (page: Page, name: string): Promise<string> {
  await fs.mkdir(artifactsDir, { recursive: true })
  const file = path.join(artifactsDir, `${name}.png`)
  await page.screenshot({ path: file, fullPage: true, animations: 'disabled' })
  if (process.env.VIGIL_UPDATE_SCREENSHOTS === '1') {
    await fs.mkdir(docsScreenshots, { recursive: true })
    await fs.copyFile(file, path.join(docsScreenshots, `${name}.png`))
  }
  return file
}

/**
 * Opens the browser while `starting` (a Vigil, say) starts, and returns both; whichever fails,
 * the other is closed before the error is thrown, so a failed start never leaves a process behind.
 */
export async function openBrowserBeside<T extends { close: () => Promise<void> }> (starting: Promise<T>, viewport?: { width: number, height: number }): Promise<[T, TestBrowser]> {
  const [started, browser] = await Promise.allSettled([starting, openBrowser(viewport)])
  if (started.status === 'fulfilled' && browser.status === 'fulfilled') return [started.value, browser.value]
  if (started.status === 'fulfilled') await started.value.close().catch(() => {})
  if (browser.status === 'fulfilled') await browser.value.close().catch(() => {})
  throw started.status === 'rejected' ? started.reason : (browser as PromiseRejectedResult).reason
}
