import { Type } from '@fastify/type-provider-typebox'
import { permissions } from './auth.ts'
import { Uuid } from './schemas.ts'

const DateTime = Type.String({ format: 'date-time' })
const NullableDateTime = Type.Union([DateTime, Type.Null()])

// RFC 5321 §4.5.3.1: a path (address) is at most 256 octets; 254 in practice.
export const Email = Type.String({ format: 'email', maxLength: 254, description: 'Case-insensitive; unique' })
export const Password = Type.String({ minLength: 1, maxLength: 256, description: 'At least 12 characters, mixing two kinds of character' })
const DisplayName = Type.String({ minLength: 1, maxLength: 200, pattern: '\\S' })
export const RoleId = Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9-]+$' })
export const PermissionName = Type.Union(permissions.map((p) => Type.Literal(p)))
export const RoleCategory = Type.Union(['patient', 'clinician', 'admin', 'developer', 'integrator', 'research'].map((c) => Type.Literal(c)), {
  description: 'Patient scope: admin = every patient, clinician = care team + break-glass, patient = self, others = none'
})

export const User = Type.Object({
  id: Uuid,
  email: Type.Union([Type.String(), Type.Null()]),
  displayName: Type.Union([Type.String(), Type.Null()], { description: 'null for patients (their name is in the patient record)' }),
  active: Type.Boolean(),
  roles: Type.Array(Type.String()),
  canLogIn: Type.Boolean(),
  lockedUntil: NullableDateTime,
  createdAt: DateTime,
  updatedAt: DateTime
})

export const NewUser = Type.Object({
  email: Email,
  displayName: DisplayName,
  password: Password,
  roles: Type.Optional(Type.Array(RoleId, { maxItems: 20, uniqueItems: true }))
}, { additionalProperties: false })

export const UserPatch = Type.Object({
  email: Type.Optional(Email),
  displayName: Type.Optional(DisplayName),
  password: Type.Optional(Password),
  active: Type.Optional(Type.Boolean())
}, { additionalProperties: false, minProperties: 1 })

export const UsersQuery = Type.Object({
  limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
  cursor: Type.Optional(Type.String({ maxLength: 64 })),
  role: Type.Optional(RoleId)
}, { additionalProperties: false })

export const RoleDefinition = Type.Object({
  id: Type.String(),
  name: Type.String(),
  category: Type.String(),
  permissions: Type.Array(Type.String()),
  builtin: Type.Boolean()
})

export const NewRole = Type.Object({
  name: DisplayName,
  category: RoleCategory,
  permissions: Type.Array(PermissionName, { uniqueItems: true, maxItems: 100 })
}, { additionalProperties: false })

export const UserRoleParams = Type.Object({ id: Uuid, roleId: RoleId }, { additionalProperties: false })

export const CareTeamAssignment = Type.Object({
  id: Type.String(),
  clinicianId: Uuid,
  patientId: Uuid,
  validFrom: DateTime,
  validTo: Type.Union([DateTime, Type.Null()], { description: 'null: open-ended' })
})

export const NewCareTeamAssignment = Type.Object({
  clinicianId: Uuid,
  patientId: Uuid,
  validFrom: Type.Optional(Type.String({ format: 'date-time', description: 'Defaults to now' })),
  validTo: Type.Optional(Type.Union([Type.String({ format: 'date-time' }), Type.Null()], { description: 'Exclusive; default open-ended' }))
}, { additionalProperties: false })

export const SerialParams = Type.Object({ id: Type.String({ pattern: '^[0-9]{1,18}$' }) }, { additionalProperties: false })

export const BreakGlassRequest = Type.Object({
  reason: Type.String({ minLength: 10, maxLength: 1000, pattern: '\\S', description: 'Why the patient must be opened; kept for review' })
}, { additionalProperties: false })

export const BreakGlassGrant = Type.Object({
  id: Uuid,
  userId: Uuid,
  patientId: Uuid,
  reason: Type.String(),
  grantedAt: DateTime,
  expiresAt: DateTime
})

export const BreakGlassQuery = Type.Object({
  limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
  patientId: Type.Optional(Uuid),
  from: Type.Optional(Type.String({ format: 'date-time' })),
  to: Type.Optional(Type.String({ format: 'date-time' }))
}, { additionalProperties: false })

export const AuditRow = Type.Object({
  id: Type.String(),
  at: DateTime,
  actorId: Type.Union([Type.String(), Type.Null()]),
  actorKind: Type.String(),
  role: Type.Union([Type.String(), Type.Null()]),
  patientId: Type.Union([Uuid, Type.Null()]),
  action: Type.String(),
  fields: Type.Array(Type.String()),
  outcome: Type.String(),
  sourceAddress: Type.Union([Type.String(), Type.Null()]),
  requestId: Type.Union([Type.String(), Type.Null()]),
  breakGlassReason: Type.Union([Type.String(), Type.Null()])
})

export const AuditQuery = Type.Object({
  limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
  cursor: Type.Optional(Type.String({ maxLength: 64 })),
  patientId: Type.Optional(Uuid),
  actorId: Type.Optional(Type.String({ maxLength: 64 })),
  outcome: Type.Optional(Type.Union([Type.Literal('allowed'), Type.Literal('denied')])),
  from: Type.Optional(Type.String({ format: 'date-time' })),
  to: Type.Optional(Type.String({ format: 'date-time' }))
}, { additionalProperties: false })

export const AccessLogEntry = Type.Object({
  at: DateTime,
  actorId: Type.Union([Type.String(), Type.Null()]),
  actorKind: Type.String(),
  actorName: Type.Union([Type.String(), Type.Null()], { description: 'the viewer\'s display name (a user) or the API token\'s name; null for the system' }),
  role: Type.Union([Type.String(), Type.Null()]),
  roleNames: Type.Array(Type.String(), { description: 'names of the roles the viewer acted in (Nurse, Doctor …)' }),
  action: Type.String(),
  fields: Type.Array(Type.String()),
  breakGlass: Type.Boolean({ description: 'Access through break-glass (outside the care team)' })
})

export const LoginRequest = Type.Object({
  email: Email,
  password: Type.String({ minLength: 1, maxLength: 256 })
}, { additionalProperties: false })

export const RefreshRequest = Type.Object({
  refreshToken: Type.String({ minLength: 1, maxLength: 512 })
}, { additionalProperties: false })

export const TokenPair = Type.Object({
  tokenType: Type.Literal('Bearer'),
  accessToken: Type.String({ description: 'Send as Authorization: Bearer; expires after expiresIn seconds' }),
  expiresIn: Type.Integer(),
  refreshToken: Type.String({ description: 'Single use: POST /v1/auth/refresh returns a new pair' }),
  userId: Uuid
})

export const NewApiToken = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 200, pattern: '\\S' }),
  role: RoleId
}, { additionalProperties: false })

export const ApiToken = Type.Object({
  id: Uuid,
  name: Type.String(),
  role: Type.String(),
  createdBy: Type.Union([Type.String(), Type.Null()]),
  createdAt: DateTime,
  lastUsedAt: NullableDateTime
})

export const CreatedApiToken = Type.Object({
  id: Uuid,
  role: Type.String(),
  token: Type.String({ description: 'Shown once; only a hash is stored' })
})
