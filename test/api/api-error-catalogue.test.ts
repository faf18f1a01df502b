import { randomUUID } from 'node:crypto'
import t from 'tap'
import { buildApi } from '../../api/app.ts'
import { UnknownRoleError, UnknownUserError } from '../../access/people.ts'
import { DecryptionError, UnknownKeyError } from '../../crypto/field-encryption.ts'
import { AssignmentChangedError, AssignmentOrderError, DuplicateMacError, NoCurrentAssignmentError, UnknownDeviceError, UnknownPatientError } from '../../devices/device-registry.ts'
import { VigilError } from '../../errors/catalogue.ts'
import type { PatientStore } from '../../patients/patients.ts'
import { startApiFixture } from '../helpers/api-deps.ts'

// Domain errors carry their code from errors/catalogue.ts; the API's error handler answers
// them with no mapping of its own. Each is thrown here from a store the API reads.

const { deps, headers } = await startApiFixture(t, 'error catalogue test')

async function answerTo (err: Error) {
  const failing: PatientStore = { ...deps.patients, get: async () => { throw err } }
  const app = await buildApi({ ...deps, patients: failing })
  try {
    return await app.inject({ method: 'GET', url: `/v1/patients/${randomUUID()}`, headers })
  } finally {
    await app.close()
  }
}

t.test('domain errors are answered with their catalogue code, status and message', async (t) => {
  const cases: Array<[VigilError, string, number]> = [
    [new DuplicateMacError('aa:bb:cc:dd:ee:ff'), 'VIGIL_ERR_DUPLICATE_MAC', 409],
    [new UnknownDeviceError(), 'VIGIL_ERR_UNKNOWN_DEVICE', 404],
    [new UnknownPatientError(), 'VIGIL_ERR_UNKNOWN_PATIENT', 404],
    [new AssignmentChangedError(), 'VIGIL_ERR_CONFLICT', 409],
    [new AssignmentOrderError('2026-01-01T00:00:00.000Z'), 'VIGIL_ERR_CONFLICT', 409],
    [new NoCurrentAssignmentError(), 'VIGIL_ERR_NOT_FOUND', 404],
    [new UnknownUserError(), 'VIGIL_ERR_UNKNOWN_USER', 404],
    [new UnknownRoleError('surgeon'), 'VIGIL_ERR_UNKNOWN_ROLE', 404]
  ]
  for (const [err, code, status] of cases) {
    t.ok(err instanceof VigilError, `${err.name} is a VigilError`)
    const res = await answerTo(err)
    t.equal(res.statusCode, status, err.name)
    t.same(res.json(), { code, message: err.message }, err.name)
  }
})

t.test('stored data the server cannot read: a 500 with a fixed message and the request id, never the key id', async (t) => {
  const unknownKey = await answerTo(new UnknownKeyError('k9secret'))
  t.equal(unknownKey.statusCode, 500)
  t.same(unknownKey.json(), {
    code: 'VIGIL_ERR_KEY_UNAVAILABLE',
    message: 'stored data is encrypted under a key the server does not have',
    requestId: unknownKey.headers['x-request-id']
  })
  t.notMatch(unknownKey.body, /k9secret/)

  const tampered = await answerTo(new DecryptionError('authentication_failed'))
  t.equal(tampered.statusCode, 500)
  t.same(tampered.json(), { code: 'VIGIL_ERR_DECRYPTION_FAILED', message: 'stored data could not be decrypted', requestId: tampered.headers['x-request-id'] })
})
