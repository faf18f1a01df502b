// tap's `after` script (.taprc): drops the Postgres test template from the shared server. The
// PGlite template stays in the temporary directory as a cache keyed by the schema.
import { dropPostgresTemplates } from './postgres.ts'

await dropPostgresTemplates()
