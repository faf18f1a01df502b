import { Fhir } from 'fhir'

// The `fhir` package (lantanagroup/FHIR.js 4.12.0) validates against the R4 StructureDefinitions
// and value sets it ships (profiles/types.json, valuesets.json, parsed from the official R4
// definitions): cardinality, types and formats, required bindings, unknown properties. Offline:
// nothing is fetched.
const fhir = new Fhir()

export interface ValidationProblem { location?: string, severity?: string, message?: string }

/** The errors (not warnings: terminology the package does not hold) in a resource or Bundle. */
export function fhirErrors (resource: unknown): ValidationProblem[] {
  const result = fhir.validate(resource as object, { errorOnUnexpected: true })
  return result.messages.filter((m) => m.severity === 'error' || m.severity === 'fatal')
}
