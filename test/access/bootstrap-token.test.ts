import t from 'tap'
import { startTestVigil, adminToken } from '../helpers/vigil.ts'
import { createTestDatabase } from '../helpers/postgres.ts'

t.test('changing VIGIL_ADMIN_TOKEN revokes the previous bootstrap token', async (t) => {
  const database = await createTestDatabase()
  t.teardown(() => database.drop())
  const first = await startTestVigil({ DATABASE_URL: database.url })
  t.equal((await first.api('GET', '/v1/patients')).status, 200)
  await first.close()

  const rotated = 'rotated-admin-token-0123456789abcdefgh'
  const second = await startTestVigil({ DATABASE_URL: database.url, VIGIL_ADMIN_TOKEN: rotated }, first.dataDir)
  t.teardown(() => second.close())
  t.equal((await second.api('GET', '/v1/patients', undefined, adminToken)).status, 401, 'old token revoked')
  t.equal((await second.api('GET', '/v1/patients', undefined, rotated)).status, 200, 'new token works')
})
