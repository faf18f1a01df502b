import fs from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import pino from 'pino'
import t from 'tap'
import { openDatabase } from '../../store/database.ts'
import { createTestDatabase } from '../helpers/postgres.ts'

const migrations = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'store', 'migrations')

t.test('patients that existed before migration 003 become users with the patient role', async (t) => {
  const testDb = await createTestDatabase({ empty: true })
  t.teardown(() => testDb.drop())
  // The database as the ingest spine left it: 001 and 002 applied, two patients, an admin token.
  const client = new pg.Client({ connectionString: testDb.url })
  await client.connect()
  await client.query('CREATE TABLE schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())')
  for (const name of ['001_metadata.sql', '002_readings.sql']) {
    await client.query(await fs.readFile(path.join(migrations, name), 'utf8'))
    await client.query('INSERT INTO schema_migrations (name) VALUES ($1)', [name])
  }
  await client.query(`INSERT INTO patients (id, display_name) VALUES
    ('11111111-1111-4111-8111-111111111111', 'Old One'), ('22222222-2222-4222-8222-222222222222', 'Old Two')`)
  await client.query("INSERT INTO api_tokens (id, name, role, token_hash) VALUES ('33333333-3333-4333-8333-333333333333', 'old', 'admin', '\\x00')")
  await client.end()

  const db = await openDatabase({ databaseUrl: testDb.url, dataDir: '', log: pino({ level: 'silent' }) })
  t.teardown(() => db.close())
  const { rows } = await db.pool.query(
    `SELECT u.id, u.email, u.display_name, array_agg(r.role_id) AS roles FROM users u JOIN roles r ON r.user_id = u.id GROUP BY u.id ORDER BY u.id`)
  t.same(rows.map((r) => [r.id, r.email, r.display_name, r.roles]), [
    ['11111111-1111-4111-8111-111111111111', null, null, ['patient']],
    ['22222222-2222-4222-8222-222222222222', null, null, ['patient']]
  ], 'same ids, patient role, no name copied')
  const roles = await db.pool.query('SELECT id FROM role_definitions WHERE builtin ORDER BY id')
  t.same(roles.rows.map((r) => r.id), ['admin', 'developer', 'device-integrator', 'doctor', 'ml-scientist', 'nurse', 'patient'])
  await t.rejects(db.pool.query("INSERT INTO users (id, email) VALUES (gen_random_uuid(), 'A@x.org'), (gen_random_uuid(), 'a@X.org')"),
    { code: '23505' }, 'emails are unique whatever their case')
})
