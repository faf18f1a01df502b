import net from 'node:net'
import { Aedes } from 'aedes'

/*
 * The broker ceiling: Aedes exactly as Vigil embeds it (same version, same Node) but bare — no
 * authentication, no ACL, no frame cap, no ingest, no storage. The same generator against it
 * shows how much of Vigil's cost is the broker itself. Forked by bench/run.ts; reports its port.
 */
const broker = await Aedes.createBroker()
const server = net.createServer(broker.handle)
server.listen(0, '127.0.0.1', () => {
  const address = server.address()
  process.send?.({ type: 'ready', port: typeof address === 'object' && address !== null ? address.port : 0 })
})

function stop (): void {
  server.close()
  broker.close(() => process.exit(0))
  setTimeout(() => process.exit(0), 2000).unref()
}
process.on('SIGTERM', stop)
process.on('disconnect', stop)
