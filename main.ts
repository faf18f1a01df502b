import { ConfigError, loadConfig } from './config/config.ts'
import { createLogger } from './observability/logger.ts'
import type { startVigil } from './vigil.ts'
import os from 'node:os'

// The composition root's entry point: read config, make the logger, start, stop on signals.
let config
try {
  config = loadConfig(process.env, os.availableParallelism())
} catch (err) {
  if (err instanceof ConfigError) {
    process.stderr.write(`vigil: configuration error: ${err.message}\n`)
    process.exit(78) // EX_CONFIG
  }
  throw err
}
const log = createLogger(config.logLevel)
// Loaded once the configuration is known to be good: a configuration error is reported before
// the whole service's modules are loaded.
const { startVigil: start } = await import('./vigil.ts')

let vigil: Awaited<ReturnType<typeof startVigil>>
try {
  vigil = await start(config, log)
} catch (err) {
  log.fatal({ err }, 'start-up failed')
  process.exit(1)
}

let stopping = false
async function stop (signal: string): Promise<void> {
  if (stopping) return
  stopping = true
  log.info({ signal }, 'shutting down')
  // A hung close must not keep a supervisor waiting forever.
  setTimeout(() => {
    log.error('shutdown took longer than 10 s: exiting')
    process.exit(1)
  }, 10_000).unref()
  try {
    await vigil.close()
    log.info('stopped')
    process.exit(0)
  } catch (err) {
    log.error({ err }, 'shutdown failed')
    process.exit(1)
  }
}
process.on('SIGINT', () => { void stop('SIGINT') })
process.on('SIGTERM', () => { void stop('SIGTERM') })
