// Child process of database-flush.test.ts: opens the embedded database in argv[2], commits one
// row, calls flushToDisk (unless argv[3] is 'no-flush'), says "flushed", then waits to be killed.
import { openDatabase } from '../../store/database.ts'
import { createLogger } from '../../observability/logger.ts'

const [dataDir, mode] = process.argv.slice(2)
const db = await openDatabase({ databaseUrl: null, dataDir: dataDir!, log: createLogger('silent') })
await db.pool.query("INSERT INTO patients (id, display_name) VALUES ('00000000-0000-4000-8000-000000000001', 'flushed')")
if (mode !== 'no-flush') await db.flushToDisk()
process.stdout.write('flushed\n')
setInterval(() => {}, 60_000)
