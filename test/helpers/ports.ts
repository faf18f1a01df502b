import { readFileSync } from 'node:fs'
import net from 'node:net'

/**
 * A free port below the kernel's ephemeral range (ip_local_port_range: 32768-60999 here), for a
 * server a test stops and starts again on the same port (influxd, Redis, a TCP proxy's outage).
 * Outgoing connections take their local ports from the ephemeral range, and so does every
 * listen on port 0; a port below it is taken only by an explicit bind. With a port from that
 * range, any connect on the machine could take it while the server was down, and the restart
 * failed with "bind: address already in use" (seen in CI: test/e2e/restart-disk-full.test.ts).
 */
export async function stablePort (): Promise<number> {
  const low = ephemeralLow()
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 10_000 + Math.floor(Math.random() * (low - 10_000))
    if (await canListen(port)) return port
  }
  throw new Error(`no free port between 10000 and ${low - 1}`)
}

/** Listens on a stablePort(), another if one is taken between the check and the listen. */
export async function listenOnStablePort (server: net.Server): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    const port = await stablePort()
    const error = await new Promise<Error | null>((resolve) => {
      server.once('error', resolve)
      server.listen(port, '127.0.0.1', () => { server.off('error', resolve); resolve(null) })
    })
    if (error === null) return port
    if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= 20) throw error
  }
}

function ephemeralLow (): number {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0])
    return Number.isInteger(low) && low > 11_000 ? low : 32_768
  } catch {
    return 32_768
  }
}

async function canListen (port: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const server = net.createServer()
    server.unref()
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
  })
}
