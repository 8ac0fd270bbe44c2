/* The flow's per-record hot path in C: flat Avro records -> events, and events -> shards.
 *
 * decode_avro(messages, plan, slots, skip, schema_ids, slow, max_entity_length) -> list of events
 *
 *   For each consumer message (confluent_kafka.Message, in order), reads its value with the
 *   record schema described by ``plan`` and appends the event
 *   ``(entity, event_time, (inputs...), partition, offset, kafka_ts)`` exactly as
 *   freshet.decode.decoder.AvroDecoder's Python loop builds it. Only the clean case is handled here:
 *   a record this code does not read to its end without doubt (an error of any kind, a
 *   varint of 10 bytes or more, an entity or event time the Python loop would refuse or
 *   check further, a wrong header) is handed to ``slow(message)``, the Python path, which
 *   returns the event or None (it made a dead letter). So every record is decoded by the
 *   Python path's rules, in order; tests/unit/test_fastdecode.py checks both agree on
 *   random and mutated records.
 *
 *   plan: bytes, two per schema field in schema order: the type ('l' int/long, 'd' double,
 *         'f' float, 's' string) and the union's null branch ('0' or '1'; '-' no union).
 *   slots: bytes, one per schema field: its position among the wanted fields
 *          (entity, event time, inputs...), or 255 for a field that is skipped.
 *   skip: 0 (schemaless) or 5 (Confluent wire format: magic byte 0, 4-byte schema id).
 *   schema_ids: a set of allowed schema ids, or None.
 *   max_entity_length: the longest entity id in characters (freshet.sinks.layout
 *          .MAX_ENTITY_LENGTH, passed in so the rule has one home).
 *
 * shard_groups(events, shards) -> dict[int, list[event]]
 *
 *   Groups events by ``zlib.crc32(entity.encode("utf-8", "surrogateescape")) % shards``
 *   (freshet.stream.pipeline.shard_of), keeping their order within each shard.
 *
 * Why: the Python decoder and grouping took a fifth of the flow's GIL time (figures in
 * tests/bench/README.md).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_FIELDS 64
#define EVENT_TIME_MIN_MS 100000000000LL
#define EVENT_TIME_MAX_MS 4102444800000LL
#define SKIPPED 255

static PyObject *s_value, *s_partition, *s_offset, *s_timestamp;

/* A zigzag varint of at most 9 bytes at *p (63 bits: no overflow). 0 when it is longer or
 * runs past the end: the Python path decides. */
static int read_long(const unsigned char *v, Py_ssize_t len, Py_ssize_t *p, int64_t *out) {
    uint64_t n = 0;
    int shift = 0;
    Py_ssize_t i = *p;
    for (int k = 0; k < 9; k++) {
        if (i >= len) return 0;
        unsigned char b = v[i++];
        n |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80) {
            *p = i;
            *out = (int64_t)(n >> 1) ^ -(int64_t)(n & 1);
            return 1;
        }
        shift += 7;
    }
    return 0;
}

/* Reads one value of ``type`` at *p; a new reference, or NULL with no error set when the
 * Python path must decide (NULL with an error set: out of memory). */
static PyObject *read_value(char type, const unsigned char *v, Py_ssize_t len, Py_ssize_t *p) {
    int64_t n;
    switch (type) {
    case 'l':
        if (!read_long(v, len, p, &n)) return NULL;
        return PyLong_FromLongLong(n);
    case 'd': {
        if (*p + 8 > len) return NULL;
        double d = PyFloat_Unpack8((const char *)v + *p, 1);
        if (d == -1.0 && PyErr_Occurred()) return NULL;
        *p += 8;
        return PyFloat_FromDouble(d);
    }
    case 'f': {
        if (*p + 4 > len) return NULL;
        double d = PyFloat_Unpack4((const char *)v + *p, 1);
        if (d == -1.0 && PyErr_Occurred()) return NULL;
        *p += 4;
        return PyFloat_FromDouble(d);
    }
    case 's': {
        if (!read_long(v, len, p, &n)) return NULL;
        if (n < 0 || n > len - *p) return NULL;
        PyObject *s = PyUnicode_DecodeUTF8((const char *)v + *p, (Py_ssize_t)n, "strict");
        if (s == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) PyErr_Clear();
            return NULL;
        }
        *p += n;
        return s;
    }
    }
    return NULL;
}

/* Entity rules of the Python loop's fast branch: a str of 1..max_length characters, none of
 * them a control character (U+0000-U+001F, U+007F-U+009F) or a surrogate (the characters of
 * freshet.sinks.layout.ENTITY_FORBIDDEN_CHARS). */
static int clean_entity(PyObject *entity, Py_ssize_t max_length) {
    if (!PyUnicode_CheckExact(entity)) return 0;
    Py_ssize_t len = PyUnicode_GET_LENGTH(entity);
    if (len <= 0 || len > max_length) return 0;
    int kind = PyUnicode_KIND(entity);
    const void *data = PyUnicode_DATA(entity);
    for (Py_ssize_t i = 0; i < len; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c <= 0x1F || (c >= 0x7F && c <= 0x9F) || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    }
    return 1;
}

/* The event of ``m`` read by the fast path: a new reference; NULL with no error when the
 * Python path must decide; NULL with an error on failure. */
static PyObject *fast_event(PyObject *m, const char *plan, Py_ssize_t nfields,
                            const unsigned char *slots, Py_ssize_t nwanted, Py_ssize_t skip,
                            PyObject *schema_ids, Py_ssize_t max_entity_length) {
    PyObject *wanted[MAX_FIELDS] = {NULL};
    PyObject *event = NULL, *inputs = NULL, *partition = NULL, *offset = NULL, *ts = NULL;
    PyObject *value = PyObject_CallMethodNoArgs(m, s_value);
    if (value == NULL) return NULL;
    if (!PyBytes_CheckExact(value)) goto slow;
    const unsigned char *v = (const unsigned char *)PyBytes_AS_STRING(value);
    Py_ssize_t len = PyBytes_GET_SIZE(value);
    Py_ssize_t p = 0;
    if (skip) {
        if (len < 5 || v[0] != 0) goto slow;
        if (schema_ids != Py_None) {
            long id = ((long)v[1] << 24) | ((long)v[2] << 16) | ((long)v[3] << 8) | (long)v[4];
            PyObject *key = PyLong_FromLong(id);
            if (key == NULL) goto error;
            int found = PySet_Contains(schema_ids, key);
            Py_DECREF(key);
            if (found < 0) goto error;
            if (!found) goto slow;
        }
        p = skip;
    }
    for (Py_ssize_t i = 0; i < nfields; i++) {
        char type = plan[2 * i], null = plan[2 * i + 1];
        PyObject *x;
        if (null != '-') {
            int64_t branch;
            if (!read_long(v, len, &p, &branch)) goto slow;
            if (branch < 0) branch += 2; /* fastavro indexes the branch list with it */
            if (branch == null - '0') {
                x = Py_NewRef(Py_None);
            } else if (branch == 1 - (null - '0')) {
                x = read_value(type, v, len, &p);
            } else {
                goto slow;
            }
        } else {
            x = read_value(type, v, len, &p);
        }
        if (x == NULL) {
            if (PyErr_Occurred()) goto error;
            goto slow;
        }
        if (slots[i] == SKIPPED) {
            Py_DECREF(x);
        } else {
            Py_XSETREF(wanted[slots[i]], x);
        }
    }
    if (p != len || !clean_entity(wanted[0], max_entity_length) || !PyLong_CheckExact(wanted[1])) goto slow;
    {
        int overflow;
        long long t = PyLong_AsLongLongAndOverflow(wanted[1], &overflow);
        if (overflow || t < EVENT_TIME_MIN_MS || t >= EVENT_TIME_MAX_MS) goto slow;
    }
    inputs = PyTuple_New(nwanted - 2);
    if (inputs == NULL) goto error;
    for (Py_ssize_t i = 2; i < nwanted; i++) {
        PyTuple_SET_ITEM(inputs, i - 2, wanted[i]);
        wanted[i] = NULL;
    }
    partition = PyObject_CallMethodNoArgs(m, s_partition);
    if (partition == NULL) goto error;
    offset = PyObject_CallMethodNoArgs(m, s_offset);
    if (offset == NULL) goto error;
    ts = PyObject_CallMethodNoArgs(m, s_timestamp);
    if (ts == NULL) goto error;
    PyObject *kafka_ts;
    if (ts != Py_None && PyTuple_Check(ts) && PyTuple_GET_SIZE(ts) == 2) {
        int set = PyObject_IsTrue(PyTuple_GET_ITEM(ts, 0));
        if (set < 0) goto error;
        kafka_ts = set ? Py_NewRef(PyTuple_GET_ITEM(ts, 1)) : PyLong_FromLong(-1);
    } else if (ts == Py_None) {
        kafka_ts = PyLong_FromLong(-1);
    } else {
        goto slow;
    }
    if (kafka_ts == NULL) goto error;
    event = PyTuple_Pack(6, wanted[0], wanted[1], inputs, partition, offset, kafka_ts);
    Py_DECREF(kafka_ts);
    goto done;
slow:
    event = NULL;
    goto done;
error:
    event = NULL;
done:
    for (Py_ssize_t i = 0; i < nwanted; i++) Py_XDECREF(wanted[i]);
    Py_XDECREF(inputs);
    Py_XDECREF(partition);
    Py_XDECREF(offset);
    Py_XDECREF(ts);
    Py_DECREF(value);
    return event;
}

static PyObject *decode_avro(PyObject *self, PyObject *args) {
    PyObject *messages, *schema_ids, *slow;
    const char *plan, *slots;
    Py_ssize_t plan_len, slots_len, skip, max_entity_length;
    if (!PyArg_ParseTuple(args, "Oy#y#nOOn", &messages, &plan, &plan_len, &slots, &slots_len,
                          &skip, &schema_ids, &slow, &max_entity_length))
        return NULL;
    Py_ssize_t nfields = slots_len, nwanted = 0;
    if (plan_len != 2 * nfields || nfields > MAX_FIELDS) {
        PyErr_SetString(PyExc_ValueError, "plan needs two bytes per field, at most 64 fields");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nfields; i++) {
        unsigned char s = (unsigned char)slots[i];
        char type = plan[2 * i], null = plan[2 * i + 1];
        if (!strchr("ldfs", type) || !strchr("01-", null) || (s != SKIPPED && s >= nfields)) {
            PyErr_Format(PyExc_ValueError, "bad plan for field %zd", i);
            return NULL;
        }
        if (s != SKIPPED && s + 1 > nwanted) nwanted = s + 1;
    }
    if (nwanted < 2) {
        PyErr_SetString(PyExc_ValueError, "the entity and event time must be wanted");
        return NULL;
    }
    if (skip != 0 && skip != 5) {
        PyErr_SetString(PyExc_ValueError, "skip must be 0 or 5");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(messages, "messages must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *events = PyList_New(0);
    if (events == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *event = fast_event(items[i], plan, nfields, (const unsigned char *)slots,
                                     nwanted, skip, schema_ids, max_entity_length);
        if (event == NULL) {
            if (PyErr_Occurred()) goto fail;
            event = PyObject_CallOneArg(slow, items[i]);
            if (event == NULL) goto fail;
            if (event == Py_None) {
                Py_DECREF(event);
                continue;
            }
        }
        int rc = PyList_Append(events, event);
        Py_DECREF(event);
        if (rc < 0) goto fail;
    }
    Py_DECREF(seq);
    return events;
fail:
    Py_XDECREF(events);
    Py_DECREF(seq);
    return NULL;
}

static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32_of(const unsigned char *s, Py_ssize_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (Py_ssize_t i = 0; i < n; i++) c = crc_table[(c ^ s[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static PyObject *shard_groups(PyObject *self, PyObject *args) {
    PyObject *events;
    Py_ssize_t shards;
    if (!PyArg_ParseTuple(args, "On", &events, &shards)) return NULL;
    if (shards < 1) {
        PyErr_SetString(PyExc_ValueError, "shards must be >= 1");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(events, "events must be a sequence");
    if (seq == NULL) return NULL;
    PyObject *groups = PyDict_New();
    if (groups == NULL) goto fail;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *event = items[i];
        if (!PyTuple_Check(event) || PyTuple_GET_SIZE(event) < 1 ||
            !PyUnicode_Check(PyTuple_GET_ITEM(event, 0))) {
            PyErr_SetString(PyExc_TypeError, "events must be tuples starting with the entity");
            goto fail;
        }
        PyObject *entity = PyTuple_GET_ITEM(event, 0);
        Py_ssize_t size;
        uint32_t crc;
        const char *utf8 = PyUnicode_AsUTF8AndSize(entity, &size);
        if (utf8 != NULL) {
            crc = crc32_of((const unsigned char *)utf8, size);
        } else { /* lone surrogates: the bytes they stand for, as shard_of encodes them */
            if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) goto fail;
            PyErr_Clear();
            PyObject *raw = PyUnicode_AsEncodedString(entity, "utf-8", "surrogateescape");
            if (raw == NULL) goto fail;
            crc = crc32_of((const unsigned char *)PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw));
            Py_DECREF(raw);
        }
        PyObject *key = PyLong_FromUnsignedLong(crc % (uint32_t)shards);
        if (key == NULL) goto fail;
        PyObject *group = PyDict_GetItemWithError(groups, key);
        if (group == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(key);
                goto fail;
            }
            group = PyList_New(0);
            if (group == NULL || PyDict_SetItem(groups, key, group) < 0) {
                Py_XDECREF(group);
                Py_DECREF(key);
                goto fail;
            }
            Py_DECREF(group); /* the dict holds it */
        }
        Py_DECREF(key);
        if (PyList_Append(group, event) < 0) goto fail;
    }
    Py_DECREF(seq);
    return groups;
fail:
    Py_XDECREF(groups);
    Py_DECREF(seq);
    return NULL;
}

static PyMethodDef methods[] = {
    {"decode_avro", decode_avro, METH_VARARGS,
     "decode_avro(messages, plan, slots, skip, schema_ids, slow, max_entity_length) -> list of "
     "events"},
    {"shard_groups", shard_groups, METH_VARARGS,
     "shard_groups(events, shards) -> {crc32(entity) % shards: [events]}"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "freshet.decode._fastdecode",
    "The flow's per-record hot path in C (see flows/decode/_fastdecode.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__fastdecode(void) {
    crc_init();
    s_value = PyUnicode_InternFromString("value");
    s_partition = PyUnicode_InternFromString("partition");
    s_offset = PyUnicode_InternFromString("offset");
    s_timestamp = PyUnicode_InternFromString("timestamp");
    if (!s_value || !s_partition || !s_offset || !s_timestamp) return NULL;
    return PyModule_Create(&module);
}
