import type { RowDataPacket } from "mysql2/promise";
import type { SigningKeyRecord } from "../domain/model.js";
import type { SigningKeyStore } from "../domain/ports.js";
import { query, text, type Pool } from "./db.js";
import { withRowLock } from "./row-lock.js";

interface SigningKeyRow extends RowDataPacket {
  id: Buffer;
  public_x: string;
  private_key_encrypted: Buffer;
  created_at: Date;
  signs_from: Date;
  retired_at: Date | null;
  revoked_at: Date | null;
}

/** Long enough to wait out another instance creating a key; short enough to fail a stuck start. */
const lockTimeoutSeconds = 30;

export function createSigningKeyStore(pool: Pool): SigningKeyStore {
  return {
    async listSigningKeys() {
      const rows = await query<SigningKeyRow[]>(
        pool,
        "SELECT id, public_x, private_key_encrypted, created_at, signs_from, retired_at, revoked_at FROM signing_keys ORDER BY signs_from, id",
      );
      return rows.map((r) => ({
        id: text(r.id),
        publicX: r.public_x,
        privateKeyEncrypted: r.private_key_encrypted,
        createdAt: r.created_at,
        signsFrom: r.signs_from,
        retiredAt: r.retired_at,
        revokedAt: r.revoked_at,
      }));
    },
    async insertSigningKey(k: SigningKeyRecord) {
      await query(
        pool,
        "INSERT INTO signing_keys (id, public_x, private_key_encrypted, created_at, signs_from, retired_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [k.id, k.publicX, k.privateKeyEncrypted, k.createdAt, k.signsFrom, k.retiredAt, k.revokedAt],
      );
    },
    async retireSigningKey(id, at) {
      await query(pool, "UPDATE signing_keys SET retired_at = ? WHERE id = ? AND retired_at IS NULL", [at, id]);
    },
    async revokeSigningKey(id, at) {
      const result = await query<{ affectedRows: number }>(
        pool,
        "UPDATE signing_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
        [at, id],
      );
      return result.affectedRows > 0;
    },
    withSigningKeyLock(work) {
      // A row in leases, not GET_LOCK, so that instances on different Galera nodes queue too.
      return withRowLock(pool, { table: "leases", name: "signing-key", waitSeconds: lockTimeoutSeconds }, work);
    },
  };
}
