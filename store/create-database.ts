// Run in a child process by store/database.ts on a first start: `node create-database.js <dir>`
// makes a new embedded database in <dir> (initdb and every migration) and exits, so the memory
// PGlite's initdb and the migrations leave behind goes with this process, not Vigil's. The
// migrations it applies are logged to stdout as JSON lines (names only); the parent logs them as
// its own.
import pino from 'pino'
import { createEmbeddedDatabase } from './database.ts'

const dir = process.argv[2]
if (dir === undefined) throw new Error('usage: create-database <dir>')
await createEmbeddedDatabase(dir, pino({ level: 'info', base: null }))
