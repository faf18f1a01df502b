import net from 'node:net'
import { once } from 'node:events'
import { listenOnStablePort } from './ports.ts'

export interface TcpProxy {
  readonly port: number
  /** A network outage: open connections are reset and new ones refused. */
  cut (): Promise<void>
  restore (): Promise<void>
  close (): Promise<void>
}

/** A TCP forwarder to inject outages between Vigil and a real server. */
export async function startTcpProxy (targetPort: number, targetHost = '127.0.0.1'): Promise<TcpProxy> {
  const sockets = new Set<net.Socket>()
  const server = net.createServer((inbound) => {
    const outbound = net.connect(targetPort, targetHost)
    sockets.add(inbound)
    sockets.add(outbound)
    inbound.pipe(outbound).pipe(inbound)
    const end = (): void => {
      inbound.destroy()
      outbound.destroy()
      sockets.delete(inbound)
      sockets.delete(outbound)
    }
    inbound.on('error', end).on('close', end)
    outbound.on('error', end).on('close', end)
  })
  // restore() listens on the same port again: one no outgoing connection can take meanwhile.
  const port = await listenOnStablePort(server)
  return {
    port,
    async cut () {
      await new Promise<void>((resolve) => { server.close(() => resolve()); for (const s of sockets) s.resetAndDestroy() })
    },
    async restore () {
      server.listen(port, '127.0.0.1')
      await once(server, 'listening')
    },
    async close () {
      for (const s of sockets) s.destroy()
      if (server.listening) await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}
