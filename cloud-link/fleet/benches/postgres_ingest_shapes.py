# Compares the two shapes of the fleet's PostgreSQL ingest for groups of G batches x 10
# readings over one psql connection, on a database with the fleet's schema:
#   unnest: the statement INGEST_POSTGRES of src/store/telemetry.rs (prepared), in
#           BEGIN/COMMIT: 3 round trips per group;
#   values: the multi-row VALUES statements of 32 rows (SQLite's path, PostgreSQL's
#           before), as literal SQL: 2 + 3 x ceil(G/32) + 2 x ceil(10G/32) statements.
# usage: python3 cloud-link/fleet/benches/postgres_ingest_shapes.py G ROUNDS unnest|values URL
# (run from the repository root; the values rows are literals, not bound parameters,
# so the server also parses them: an upper bound of that shape's cost.)
import re, sys, subprocess, time, random
G=int(sys.argv[1]); ROUNDS=int(sys.argv[2]); mode=sys.argv[3]; url=sys.argv[4]
source=open('cloud-link/fleet/src/store/telemetry.rs').read()
sql=re.search(r'const INGEST_POSTGRES: &str = "(.*?)";\n', source, re.S).group(1)
out=["\\set QUIET on", "SET synchronous_commit = on;"]
if mode=="unnest":
    out.append("PREPARE ing(text,text,text,text,bigint,text,text,text,text,text,text,text,bigint) AS " + sql + ";")
seq=0
for r in range(ROUNDS):
    devs=[f"wd-{i:05}" for i in range(G)]
    seq+=1
    if mode=="unnest":
        a=lambda xs: "'{" + ",".join(xs) + "}'"
        owners=[];points=[];ts=[];vals=[];units=[];texts=[];flags=[]
        for b in range(G):
            for k in range(10):
                owners.append(str(b+1)); points.append(f'"line1/p{k}"'); ts.append(str(seq*1000+k)); vals.append(str(random.random())); units.append('"bar"'); texts.append("NULL"); flags.append("NULL")
        out.append("BEGIN;")
        out.append("EXECUTE ing(%s,%s,%s,%s,%d,%s,%s,%s,%s,%s,%s,%s,%d);" % (a(['"%s"'%d for d in devs]), a(['"t"']*G), a(['1']*G), a([str(seq)]*G), seq, a(owners), a(points), a(ts), a(vals), a(units), a(texts), a(flags), 10**15))
        out.append("COMMIT;")
    else:
        out.append("BEGIN;")
        for c in range(0,G,32):
            ch=devs[c:c+32]
            out.append("INSERT INTO telemetry_batches (device_id, stream, epoch, seq, received_ms) VALUES " + ",".join("('%s','t',1,%d,%d)"%(d,seq,seq) for d in ch) + " ON CONFLICT DO NOTHING RETURNING device_id, stream, epoch, seq;")
        for c in range(0,G,32):
            ch=devs[c:c+32]
            out.append("INSERT INTO devices (id, first_seen_ms, last_seen_ms) VALUES " + ",".join("('%s',%d,%d)"%(d,seq,seq) for d in ch) + " ON CONFLICT (id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms;")
        rows=[(d,f"line1/p{k}",seq*1000+k,random.random()) for d in devs for k in range(10)]
        for c in range(0,len(rows),32):
            out.append("INSERT INTO telemetry (device_id, point, ts_ms, value, unit, text, flag, received_ms) VALUES " + ",".join("('%s','%s',%d,%r,'bar',NULL,NULL,%d)"%(d,p,t,v,seq) for d,p,t,v in rows[c:c+32]) + ";")
        for c in range(0,len(rows),32):
            out.append("INSERT INTO latest_values (device_id, point, ts_ms, value, unit, text, flag) VALUES " + ",".join("('%s','%s',%d,%r,'bar',NULL,NULL)"%(d,p,t,v) for d,p,t,v in rows[c:c+32]) + " ON CONFLICT (device_id, point) DO UPDATE SET ts_ms = excluded.ts_ms, value = excluded.value, unit = excluded.unit, text = excluded.text, flag = excluded.flag WHERE excluded.ts_ms >= latest_values.ts_ms;")
        out.append("COMMIT;")
script="\n".join(out)+"\n"
t0=time.time()
p=subprocess.run(["psql","-X","-q","-o","/dev/null",url],input=script.encode(),capture_output=True)
dt=time.time()-t0
print(mode, "G=%d rounds=%d: %.2f s wall, %.0f batches/s, statements/group=%s, err=%s" % (G, ROUNDS, dt, G*ROUNDS/dt, "3" if mode=="unnest" else 2+3*((G+31)//32)+2*((10*G+31)//32), p.stderr.decode()[:200]))
