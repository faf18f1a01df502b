import { once } from 'node:events'
import type net from 'node:net'
import type { Logger } from 'pino'

/**
 * Binds a server, turning EADDRINUSE into a message that names the variable to change. With
 * `fallback` (the port was a default, not configured) a taken port is replaced by a free one.
 * Returns the port actually bound.
 */
export async function listen (server: net.Server, host: string, port: number, fallback: boolean, variable: string, log: Logger): Promise<number> {
  try {
    server.listen(port, host)
    await once(server, 'listening')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err
    if (!fallback || port === 0) {
      throw new Error(`${variable} ${port} on ${host} is already in use: stop what holds it or set ${variable} to a free port (0 picks one)`)
    }
    server.listen(0, host)
    await once(server, 'listening')
    log.warn({ variable, wanted: port, port: (server.address() as net.AddressInfo).port },
      `default port ${port} is in use (set ${variable} to choose one): listening on a free port instead`)
  }
  return (server.address() as net.AddressInfo).port
}
