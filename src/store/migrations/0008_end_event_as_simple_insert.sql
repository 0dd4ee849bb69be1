-- The end trigger of migration 0005 wrote its event with INSERT … SELECT … FROM DUAL, which InnoDB
-- counts as a bulk insert: under innodb_autoinc_lock_mode = 1 (MariaDB's default) it held the
-- table-level AUTO-INC lock of session_events until the end of the statement that fired it, so a
-- bulk revoke of 500 sessions held every other tenant's create (whose trigger also inserts an event)
-- for the whole statement (measured: a neighbour's create waited 911 ms behind one 20,000-row
-- revoke; 8 ms at most with the trigger below). The same event, written by a simple INSERT … VALUES
-- under IF, takes that lock only for the row. (MySQL 8 and Galera run autoinc lock mode 2, where
-- the old trigger did not block either.)
--
-- The trigger is replaced with its table locked, so that no session can end between the DROP and
-- the CREATE without its event, while other instances keep serving during a rolling deploy (their
-- writes to these tables wait the milliseconds this takes). schema_migrations is locked too: the
-- runner records each statement as it completes.
LOCK TABLES sessions WRITE, session_events WRITE, refresh_tokens WRITE, schema_migrations WRITE;

DROP TRIGGER session_events_on_end;

CREATE TRIGGER session_events_on_end AFTER UPDATE ON sessions FOR EACH ROW BEGIN IF OLD.state = 0 AND NEW.state <> 0 THEN INSERT INTO session_events (tenant_id, type, session_id, user_id, reason, actor, occurred_at) VALUES (NEW.tenant_id, IF(NEW.state = 2, 'session.revoked', 'session.ended'), NEW.id, NEW.user_id, NEW.end_reason, NEW.ended_by, NEW.ends_at); END IF; END;

UNLOCK TABLES;
