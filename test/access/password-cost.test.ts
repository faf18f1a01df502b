import pg from 'pg'
import t from 'tap'
import { createTestDatabase } from '../helpers/postgres.ts'
import { startTestVigil } from '../helpers/vigil.ts'

// VIGIL_PASSWORD_SCRYPT_LOG2_N reaches the hashes a running Vigil stores, and a hash made at
// one cost still verifies after the setting changes (the cost lives in the hash).
const database = await createTestDatabase()
t.teardown(() => database.drop())
const pool = new pg.Pool({ connectionString: database.url, max: 1 })
t.teardown(() => pool.end())

async function storedHash (email: string): Promise<string> {
  const { rows } = await pool.query<{ password_hash: string }>('SELECT password_hash FROM users WHERE email = $1', [email])
  return rows[0]!.password_hash
}

async function login (vigil: Awaited<ReturnType<typeof startTestVigil>>, email: string, password: string): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${vigil.httpPort}/v1/auth/login`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email, password })
  })
  return res.status
}

t.test('new hashes take the configured cost; old ones keep theirs', async (t) => {
  const password = 'correct horse 42'
  const first = await startTestVigil({ DATABASE_URL: database.url, VIGIL_PASSWORD_SCRYPT_LOG2_N: '15' })
  const created = await first.api('POST', '/v1/users', { email: 'cost15@example.org', displayName: 'Cost 15', password, roles: ['nurse'] })
  t.equal(created.status, 201)
  t.match(await storedHash('cost15@example.org'), /^scrypt\$32768\$8\$1\$/, 'N = 2^15')
  t.equal(await login(first, 'cost15@example.org', password), 200)
  t.equal(await login(first, 'nobody@example.org', password), 401, 'an unknown account is refused (after a dummy hash at the same cost)')
  await first.close()

  const second = await startTestVigil({ DATABASE_URL: database.url, VIGIL_PASSWORD_SCRYPT_LOG2_N: '14' })
  t.teardown(() => second.close())
  t.equal(await login(second, 'cost15@example.org', password), 200, 'the 2^15 hash verifies under the 2^14 setting')
  await second.api('POST', '/v1/users', { email: 'cost14@example.org', displayName: 'Cost 14', password, roles: ['nurse'] })
  t.match(await storedHash('cost14@example.org'), /^scrypt\$16384\$8\$1\$/, 'N = 2^14')
})
