import { VigilError } from '../errors/catalogue.ts'

// The registry's refusals carry their code from the one catalogue (errors/catalogue.ts): the
// API answers them as it answers any VigilError, with no mapping of its own.

export class DuplicateMacError extends VigilError {
  constructor (readonly mac: string) {
    super('VIGIL_ERR_DUPLICATE_MAC', `a device with MAC ${mac} is already registered`)
    this.name = 'DuplicateMacError'
  }
}

export class UnknownDeviceError extends VigilError {
  constructor () {
    super('VIGIL_ERR_UNKNOWN_DEVICE', 'no device with this id')
    this.name = 'UnknownDeviceError'
  }
}

export class UnknownPatientError extends VigilError {
  constructor () {
    super('VIGIL_ERR_UNKNOWN_PATIENT', 'no patient with this id')
    this.name = 'UnknownPatientError'
  }
}

/** The device's assignment changed between the caller's access check and its change. */
export class AssignmentChangedError extends VigilError {
  constructor () {
    super('VIGIL_ERR_CONFLICT', 'the device\'s assignment changed meanwhile: read it again and retry')
    this.name = 'AssignmentChangedError'
  }
}

export class NoCurrentAssignmentError extends VigilError {
  constructor () {
    super('VIGIL_ERR_NOT_FOUND', 'the device has no current assignment')
    this.name = 'NoCurrentAssignmentError'
  }
}

/** A new or corrected assignment period would overlap another of the same device. */
export class AssignmentOrderError extends VigilError {
  constructor (readonly notBefore: string, what = "the current assignment's start") {
    super('VIGIL_ERR_CONFLICT', `validFrom must be after ${what} (${notBefore}): assignment periods of a device never overlap`)
    this.name = 'AssignmentOrderError'
  }
}
