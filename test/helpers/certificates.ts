import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)

export interface CertificateFiles {
  certFile: string
  keyFile: string
}

export interface TestPki {
  dir: string
  /** A CA that signs the server certificate and client certificates. */
  ca: CertificateFiles
  /** For 127.0.0.1 and localhost, signed by the CA. */
  server: CertificateFiles
  /** A client certificate with this common name, signed by `signer` (default: the CA). */
  client (commonName: string, signer?: CertificateFiles): Promise<CertificateFiles>
  /** Another CA, for certificates the server must not trust. */
  otherCa (): Promise<CertificateFiles>
  remove (): Promise<void>
}

/**
 * Generates a throwaway PKI with the openssl CLI in a temp dir (P-256 keys, valid one day).
 * Nothing here is ever committed: each test file makes its own and removes it.
 */
export async function createTestPki (): Promise<TestPki> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-pki-'))
  let serial = 0
  const files = (name: string): CertificateFiles => ({ certFile: path.join(dir, `${name}.crt`), keyFile: path.join(dir, `${name}.key`) })

  async function selfSigned (name: string, subject: string): Promise<CertificateFiles> {
    const f = files(name)
    await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', f.keyFile, '-out', f.certFile, '-days', '1', '-subj', subject,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'])
    return f
  }

  async function signed (name: string, subject: string, signer: CertificateFiles, extensions: string): Promise<CertificateFiles> {
    const f = files(name)
    const csr = path.join(dir, `${name}.csr`)
    const ext = path.join(dir, `${name}.ext`)
    await fs.writeFile(ext, extensions)
    await run('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', f.keyFile, '-out', csr, '-subj', subject])
    await run('openssl', ['x509', '-req', '-in', csr, '-CA', signer.certFile, '-CAkey', signer.keyFile,
      '-set_serial', String(++serial + 1000), '-days', '1', '-out', f.certFile, '-extfile', ext])
    return f
  }

  const ca = await selfSigned('ca', '/CN=Vigil test CA')
  const server = await signed('server', '/CN=localhost', ca,
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n')
  return {
    dir,
    ca,
    server,
    async client (commonName, signer = ca) {
      return await signed(`client-${++serial}`, `/CN=${commonName}`, signer, 'extendedKeyUsage=clientAuth\n')
    },
    async otherCa () {
      return await selfSigned(`other-ca-${++serial}`, '/CN=Untrusted test CA')
    },
    async remove () {
      await fs.rm(dir, { recursive: true, force: true })
    }
  }
}
