-- large objects: psql's \lo_ commands use libpq's fastpath calls
\lo_import :'lofile'
SELECT length(lo_get(:LASTOID)), md5(lo_get(:LASTOID));
\lo_export :LASTOID :'outfile'
BEGIN;
SELECT lo_create(4242421);
SELECT lo_put(4242421, 0, 'written in a transaction');
SELECT convert_from(lo_get(4242421), 'UTF8');
COMMIT;
\lo_unlink 4242421
\lo_unlink :LASTOID
SELECT count(*) FROM pg_largeobject_metadata;
