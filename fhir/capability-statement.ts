import { BP_PANEL, fhirMetrics } from './vital-signs.ts'
import type { Resource } from './resources.ts'

/** What /fhir/R4 implements, and nothing more (R4 §8.? CapabilityStatement). Keep in step with api/routes/fhir*.ts. */
export function capabilityStatementOf (options: { base: string, softwareVersion: string, date: string, flags: boolean, bulkExport?: boolean }): Resource {
  const profiles = [...new Set([BP_PANEL.profile, ...Object.values(fhirMetrics).flatMap((m) => 'profile' in m ? [m.profile] : [])])]
  const read = [{ code: 'read' }, { code: 'search-type' }]
  const reference = (name: string, documentation: string) => ({ name, type: 'reference', documentation })
  // FHIR Bulk Data Access v2 (https://hl7.org/fhir/uv/bulkdata/): the three $export operations.
  const bulk = options.bulkExport === true
  const bulkOperation = (name: string, kind: string, documentation: string) => ({ name, definition: `http://hl7.org/fhir/uv/bulkdata/OperationDefinition/${kind}`, documentation })
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: options.date,
    publisher: 'Vigil',
    kind: 'instance',
    software: { name: 'Vigil', version: options.softwareVersion },
    implementation: { description: 'Vigil remote patient monitoring: read and search', url: options.base },
    fhirVersion: '4.0.1',
    ...(bulk ? { instantiates: ['http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data'] } : {}),
    format: ['application/fhir+json', 'json'],
    rest: [{
      mode: 'server',
      documentation: 'Every interaction except metadata needs Authorization: Bearer <token> (a Vigil API token or login access token). ' +
        'Searches refuse parameters not listed here (400). A patient the caller may not reach answers 404, as one that does not exist. ' +
        'Pages: follow the Bundle\'s next link (its _cursor is opaque).',
      security: { cors: false, description: 'Bearer tokens; the same permissions, care-team checks and audit trail as /v1' },
      resource: [
        {
          type: 'Patient',
          interaction: read,
          searchParam: [
            { name: '_id', type: 'token', documentation: 'A Vigil patient id' },
            { name: 'identifier', type: 'token', documentation: 'urn:ietf:rfc:3986|urn:uuid:{id} (Vigil\'s id); a medical card number only through POST Patient/_search (form body) with phi:read. Without identifier or _id: the patients the caller may see' }
          ],
          ...(bulk ? { operation: [bulkOperation('export', 'patient-export', 'Patient/$export: the patients the caller reaches (as Patient search)')] } : {})
        },
        {
          type: 'Observation',
          supportedProfile: profiles,
          interaction: read,
          searchParam: [
            reference('patient', 'Required (or subject): Patient/{id} or {id}'),
            reference('subject', 'As patient'),
            { name: 'code', type: 'token', documentation: 'LOINC (http://loinc.org|8867-4), SNOMED CT for NEWS2, or urn:vigil:metric|{metric}; comma-separated values are ORed' },
            { name: 'date', type: 'date', documentation: 'effectiveDateTime; prefixes eq, ge, gt, le, lt; repeat to bound both ends' }
          ]
        },
        {
          type: 'Device',
          interaction: read,
          searchParam: [reference('patient', 'Devices currently assigned to the patient')]
        },
        ...(options.flags
          ? [{
              type: 'Flag',
              interaction: read,
              searchParam: [reference('patient', 'The patient\'s unresolved alerts (open or acknowledged)')]
            }]
          : []),
        ...(bulk
          ? [{
              type: 'Group',
              documentation: 'A Group is a clinician\'s care team: its id is the clinician\'s user id, its members the patients on their care team now (assignments and active on-call shifts). Only $export is implemented: by that clinician, or by a caller who reaches every patient.',
              operation: [bulkOperation('export', 'group-export', 'Group/{id}/$export: the care team\'s patients the caller reaches')]
            }]
          : [])
      ],
      ...(bulk
        ? {
            operation: [bulkOperation('export', 'export', '$export: everything the caller reaches. Prefer: respond-async; _type (Patient, Device, Observation, Flag), _since, _outputFormat application/fhir+ndjson. Status and files only for the caller; files expire (BULK_EXPORT_TTL_HOURS)')]
          }
        : {})
    }]
  }
}
