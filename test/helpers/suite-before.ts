// tap's `before` script (.taprc): builds the migrated database templates once, before the test
// files start two at a time, so that no two files race to build them. A file run on its own
// (`npx tsx test/…`) builds them on first use instead.
import { ensureEmbeddedTemplate } from './pglite-template.ts'
import { ensurePostgresTemplate } from './postgres.ts'

await Promise.all([ensureEmbeddedTemplate(), ensurePostgresTemplate()])
