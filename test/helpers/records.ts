// Record bodies for the PHI tests.

/** A full record; `tag` makes its values unique (and findable) per test. */
export function fullRecord (tag = 'X') {
  return {
    dateOfBirth: '1984-02-29',
    addresses: [{ kind: 'home', line1: `1 ${tag} Street`, line2: 'Flat 2', city: 'Berlin', region: 'BE', postalCode: '10115', country: 'DE' }],
    primaryCareProvider: { name: `Dr ${tag}`, organization: 'Praxis Mitte', phone: '+49 30 1234567', email: 'gp@example.org' },
    billing: { accountHolder: `Holder ${tag}`, email: 'billing@example.org', paymentMethod: 'insurance', accountReference: `ACC-${tag}` },
    insurance: [{ payer: 'AOK', memberId: `M-${tag}`, groupNumber: 'G1', validUntil: '2030-12-31' }],
    medicalCard: { number: `CARD-${tag}`, issuer: 'AOK', validUntil: '2029-01-31' },
    familyMembers: [{ name: `Sibling ${tag}`, relationship: 'sister', phone: '+49 170 000000' }],
    emergencyContacts: [{ name: `Contact ${tag}`, relationship: 'spouse', phone: '+49 171 000000', email: 'contact@example.org' }],
    medicalHistory: {
      heightCm: 172,
      weightKg: 68.5,
      gender: 'female',
      medications: [{ name: `Drug ${tag}`, dose: '5 mg', frequency: 'twice daily', route: 'oral', since: '2020-01-01' }],
      allergies: [{ substance: `Allergen ${tag}`, reaction: 'hives', severity: 'severe' }]
    }
  }
}
