// The patient's structured record (issue 3, item 1). One schema gives validation, types and
// the OpenAPI document; what JSON Schema cannot say (a date in the future, a country code
// that does not exist) is checked by `recordProblems` below, with the same `details` paths.
import { Type } from '@fastify/type-provider-typebox'
import type { Static, TSchema } from '@fastify/type-provider-typebox'

// The same as api/schemas/common.ts's Uuid, written here so the record's room needs nothing from the API's.
const Uuid = Type.String({ format: 'uuid' })

/** Free text: at least one non-space character. */
const Text = (maxLength: number, description?: string) =>
  Type.String({ minLength: 1, maxLength, pattern: '\\S', ...(description === undefined ? {} : { description }) })
// ITU-T E.164 numbers are at most 15 digits; room for a leading +, spaces, dashes, dots and brackets.
const Phone = Type.String({ minLength: 3, maxLength: 32, pattern: '^\\+?[0-9][0-9 ().-]*[0-9]$', description: 'E.164 preferred (+4930123456); spaces, dashes, dots and brackets allowed' })
const Email = Type.String({ format: 'email', maxLength: 254 })
const CalendarDate = (description: string) => Type.String({ format: 'date', description })
const list = <T extends TSchema>(item: T, maxItems: number) => Type.Array(item, { maxItems })

export const Address = Type.Object({
  kind: Type.Union([Type.Literal('home'), Type.Literal('work'), Type.Literal('billing'), Type.Literal('mailing'), Type.Literal('other')]),
  line1: Text(200),
  line2: Type.Optional(Text(200)),
  city: Text(100),
  region: Type.Optional(Text(100, 'State, province or county')),
  postalCode: Type.String({ minLength: 1, maxLength: 20, pattern: '^[A-Za-z0-9][A-Za-z0-9 -]*$' }),
  country: Type.String({ pattern: '^[A-Z]{2}$', description: 'ISO 3166-1 alpha-2 code, upper case (DE, US …)' })
}, { additionalProperties: false })

export const PrimaryCareProvider = Type.Object({
  name: Text(200),
  organization: Type.Optional(Text(200)),
  phone: Type.Optional(Phone),
  email: Type.Optional(Email)
}, { additionalProperties: false })

export const Billing = Type.Object({
  accountHolder: Text(200),
  address: Type.Optional(Address),
  email: Type.Optional(Email),
  phone: Type.Optional(Phone),
  paymentMethod: Type.Optional(Type.Union([
    Type.Literal('insurance'), Type.Literal('self-pay'), Type.Literal('card'), Type.Literal('bank-transfer'), Type.Literal('other')
  ])),
  accountReference: Type.Optional(Text(64, 'Billing account or payer reference'))
}, { additionalProperties: false })

export const Insurance = Type.Object({
  payer: Text(200),
  memberId: Text(64),
  groupNumber: Type.Optional(Text(64)),
  validUntil: Type.Optional(CalendarDate('Last day of cover'))
}, { additionalProperties: false })

export const MedicalCard = Type.Object({
  number: Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9][A-Za-z0-9 -]*$', description: 'Looked up by POST /v1/patients/lookup (spaces, dashes and case ignored)' }),
  issuer: Text(200),
  validUntil: Type.Optional(CalendarDate('Expiry date'))
}, { additionalProperties: false })

export const FamilyMember = Type.Object({
  name: Text(200),
  relationship: Text(100),
  phone: Type.Optional(Phone)
}, { additionalProperties: false })

export const EmergencyContact = Type.Object({
  name: Text(200),
  relationship: Text(100),
  phone: Phone,
  email: Type.Optional(Email)
}, { additionalProperties: false })

export const Medication = Type.Object({
  name: Text(200),
  dose: Text(100, 'e.g. 5 mg'),
  frequency: Text(100, 'e.g. twice daily'),
  route: Type.Optional(Text(100, 'e.g. oral')),
  since: Type.Optional(CalendarDate('Started on; not in the future'))
}, { additionalProperties: false })

export const allergySeverities = ['mild', 'moderate', 'severe', 'life-threatening'] as const
export const Allergy = Type.Object({
  substance: Text(200),
  reaction: Text(200),
  severity: Type.Union(allergySeverities.map((s) => Type.Literal(s)))
}, { additionalProperties: false })

// HL7 FHIR R4 AdministrativeGender.
export const genders = ['female', 'male', 'other', 'unknown'] as const
export const MedicalHistory = Type.Object({
  // The vitals catalogue's plausible ranges for body_height and body_weight.
  heightCm: Type.Optional(Type.Number({ minimum: 20, maximum: 275 })),
  weightKg: Type.Optional(Type.Number({ minimum: 0.5, maximum: 500 })),
  gender: Type.Optional(Type.Union(genders.map((g) => Type.Literal(g)))),
  medications: Type.Optional(list(Medication, 100)),
  allergies: Type.Optional(list(Allergy, 100))
}, { additionalProperties: false })

/** The record's top-level fields: each is replaced whole by PUT and PATCH. */
export const recordFields = [
  'dateOfBirth', 'addresses', 'primaryCareProvider', 'billing', 'insurance', 'medicalCard',
  'familyMembers', 'emergencyContacts', 'medicalHistory'
] as const
export type RecordField = typeof recordFields[number]

const fieldSchemas = {
  dateOfBirth: CalendarDate('YYYY-MM-DD; not in the future, not before 1900'),
  addresses: list(Address, 10),
  primaryCareProvider: PrimaryCareProvider,
  billing: Billing,
  insurance: list(Insurance, 10),
  medicalCard: MedicalCard,
  familyMembers: list(FamilyMember, 50),
  emergencyContacts: list(EmergencyContact, 20),
  medicalHistory: MedicalHistory
} as const

/** PUT: the whole record; an omitted field is cleared. */
export const RecordBody = Type.Object({
  dateOfBirth: Type.Optional(fieldSchemas.dateOfBirth),
  addresses: Type.Optional(fieldSchemas.addresses),
  primaryCareProvider: Type.Optional(fieldSchemas.primaryCareProvider),
  billing: Type.Optional(fieldSchemas.billing),
  insurance: Type.Optional(fieldSchemas.insurance),
  medicalCard: Type.Optional(fieldSchemas.medicalCard),
  familyMembers: Type.Optional(fieldSchemas.familyMembers),
  emergencyContacts: Type.Optional(fieldSchemas.emergencyContacts),
  medicalHistory: Type.Optional(fieldSchemas.medicalHistory)
}, { additionalProperties: false })
export type RecordBody = Static<typeof RecordBody>

/** PATCH: the fields given replace the stored ones; null clears one. */
export const RecordPatch = Type.Object({
  dateOfBirth: Type.Optional(Type.Union([fieldSchemas.dateOfBirth, Type.Null()])),
  addresses: Type.Optional(Type.Union([fieldSchemas.addresses, Type.Null()])),
  primaryCareProvider: Type.Optional(Type.Union([fieldSchemas.primaryCareProvider, Type.Null()])),
  billing: Type.Optional(Type.Union([fieldSchemas.billing, Type.Null()])),
  insurance: Type.Optional(Type.Union([fieldSchemas.insurance, Type.Null()])),
  medicalCard: Type.Optional(Type.Union([fieldSchemas.medicalCard, Type.Null()])),
  familyMembers: Type.Optional(Type.Union([fieldSchemas.familyMembers, Type.Null()])),
  emergencyContacts: Type.Optional(Type.Union([fieldSchemas.emergencyContacts, Type.Null()])),
  medicalHistory: Type.Optional(Type.Union([fieldSchemas.medicalHistory, Type.Null()]))
}, { additionalProperties: false, minProperties: 1 })
export type RecordPatch = Static<typeof RecordPatch>

export const PatientRecord = Type.Object({
  patientId: Uuid,
  ...RecordBody.properties,
  updatedAt: Type.String({ format: 'date-time' })
})

export const LookupBody = Type.Object({
  medicalCardNumber: MedicalCard.properties.number
}, { additionalProperties: false })

export const LookupResult = Type.Object({
  items: Type.Array(Type.Object({ patientId: Uuid }), { description: 'Patients whose medical card has this number (and whom the caller may see)' })
})

export const KeyUsage = Type.Object({
  activeKeyId: Type.String(),
  keys: Type.Array(Type.Object({
    keyId: Type.String(),
    configured: Type.Boolean({ description: 'false: records under a key Vigil no longer has (unreadable until it is configured again)' }),
    active: Type.Boolean(),
    records: Type.Integer({ description: 'Patient records encrypted under this key' }),
    voiceNotes: Type.Integer({ description: 'Voice note transcripts encrypted under this key' }),
    clinicalText: Type.Integer({ description: 'Alert comments and resolve reasons, break-glass, override and SpO2-scale reasons under this key (key id "plaintext": not yet encrypted); retire a key once this, records and voiceNotes are 0' })
  }))
})

// ---------------------------------------------------------------------------------------
// Checks JSON Schema cannot express. Messages describe the rule, never the value.
// ---------------------------------------------------------------------------------------

export interface Problem { path: string, message: string }

const regionNames = new Intl.DisplayNames(['en'], { type: 'region', fallback: 'code' })
// Codes ICU names that ISO 3166-1 only reserves (UK is GB there) or that are not countries.
const notCountries = new Set(['AC', 'CP', 'DG', 'EA', 'EU', 'EZ', 'IC', 'QO', 'TA', 'UK', 'UN', 'XA', 'XB', 'ZZ'])

/** Whether `code` is an assigned ISO 3166-1 alpha-2 code (ICU's region data; XK is accepted, as ICU does). */
export function isCountryCode (code: string): boolean {
  return /^[A-Z]{2}$/.test(code) && !notCountries.has(code) && regionNames.of(code) !== code
}

/** The semantic problems in a record (or patch): dates against `today` (YYYY-MM-DD, UTC), country codes. */
export function recordProblems (record: RecordPatch, today: string): Problem[] {
  const problems: Problem[] = []
  const notFuture = (date: string | undefined, path: string, what: string): void => {
    if (date !== undefined && date > today) problems.push({ path, message: `${what} must not be in the future` })
  }
  const country = (address: Static<typeof Address> | undefined, path: string): void => {
    if (address !== undefined && !isCountryCode(address.country)) {
      problems.push({ path: `${path}/country`, message: 'must be an ISO 3166-1 alpha-2 country code' })
    }
  }
  if (typeof record.dateOfBirth === 'string') {
    notFuture(record.dateOfBirth, 'body/dateOfBirth', 'date of birth')
    if (record.dateOfBirth < '1900-01-01') problems.push({ path: 'body/dateOfBirth', message: 'date of birth must not be before 1900-01-01' })
  }
  record.addresses?.forEach((a, i) => country(a, `body/addresses/${i}`))
  country(record.billing?.address, 'body/billing/address')
  record.medicalHistory?.medications?.forEach((m, i) => notFuture(m.since, `body/medicalHistory/medications/${i}/since`, 'since'))
  return problems
}
