import type { FastifyInstance } from 'fastify'
import { VigilError } from '../../errors/catalogue.ts'

// Space comes back when an operator frees it or the spool delivers: not within seconds.
export const DISK_LOW_RETRY_AFTER_SECONDS = '30'

const READ_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS'])

/**
 * While the data directory is below its free-space reserve (store/disk-reserve.ts), writes
 * answer 503 VIGIL_ERR_DISK_LOW. Registered on /v1 after authentication, before the body is
 * read. Reads go on: they write only audit rows, which the reserve's margin holds; so do
 * /v1/auth logins and refreshes (not under /v1's hooks).
 */
export function refuseWritesWhileDiskLow (v1: FastifyInstance, diskReserve: { low: () => boolean }): void {
  v1.addHook('onRequest', async (request, reply) => {
    if (READ_METHODS.has(request.method) || !diskReserve.low()) return
    reply.header('retry-after', DISK_LOW_RETRY_AFTER_SECONDS)
    throw new VigilError('VIGIL_ERR_DISK_LOW', 'server storage is low: writes are refused until space is freed, retry later')
  })
}
