/* kvmcore._listwalk: the hot loop of a kernel list walk, in C.
 *
 * walk_spans() follows a kernel list (struct list_head links) from node to
 * node, and for each structure on it reads one span of bytes from the dump
 * file with pread(2) and unpacks the members named by a layout. It is an
 * accelerator only: it reads what the address space vouches is stored
 * contiguously and uncompressed in the file (its `locate` callable), and it
 * stops, handing the walk back to the Python loop (linux/tasks.py), at
 * anything else: the list's end, a node met before, a span it cannot read
 * (not in such a block, past the file's end, a read error), or its step
 * limit. The Python loop decides what each of those means and says so; this
 * loop never raises for the dump's content. build_task_records() then does
 * TaskReader._record's work for what it read, calling _record itself where
 * the reader's caches have no entry yet.
 *
 * Measured reason (README, issue 18): `ps` at 10,000 tasks spent ~5 us a task
 * in the Python walk, of which the pread itself is ~1.6 us on the benchmark
 * machine; the rest was interpreter work this loop does not do.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <unistd.h>

#define BLOCK_SHIFT 21
#define BLOCK_SIZE (1ULL << BLOCK_SHIFT)
#define MAX_SPAN 65536 /* bytes: a span is part of one structure */
#define MAX_FIELDS 64
#define PIECE_GAP 1024

enum kind { UNSIGNED = 0, SIGNED = 1, BYTES = 2 };

typedef struct {
    Py_ssize_t offset; /* in the span */
    Py_ssize_t size;   /* 0: a member this kernel lacks, read as 0 */
    int kind;
} field;

/* The file offset of the 2 MiB block holding `va`, -1 when it cannot be read
 * directly, -2 on a Python error. `blocks` caches block address -> offset
 * across calls; `locate(block_va)` answers a miss. */
static long long block_offset(PyObject *blocks, PyObject *locate, unsigned long long va)
{
    PyObject *key = PyLong_FromUnsignedLongLong(va & ~(BLOCK_SIZE - 1));
    if (key == NULL)
        return -2;
    PyObject *hit = PyDict_GetItemWithError(blocks, key); /* borrowed */
    PyObject *value = hit;
    if (hit == NULL) {
        if (PyErr_Occurred()) {
            Py_DECREF(key);
            return -2;
        }
        value = PyObject_CallOneArg(locate, key);
        if (value == NULL || PyDict_SetItem(blocks, key, value) < 0) {
            Py_XDECREF(value);
            Py_DECREF(key);
            return -2;
        }
    }
    long long offset = -1;
    if (PyLong_Check(value)) /* an int's value: no __index__ to run on a borrowed object */
        offset = PyLong_AsLongLong(value);
    else
        PyErr_SetString(PyExc_TypeError, "locate() must return an int");
    if (hit == NULL)
        Py_DECREF(value);
    Py_DECREF(key);
    if (offset == -1 && PyErr_Occurred())
        return -2;
    /* -1 below 0 and near the top, where adding a block or an offset in it would overflow */
    return offset < 0 || offset > LLONG_MAX - 4 * (long long)BLOCK_SIZE ? -1 : offset;
}

typedef struct {
    Py_ssize_t start, length; /* in the span */
} piece;

/* Read the pieces of the span of `length` bytes at `va` into buf, each at its
 * place: 1 read, 0 not readable here, -1 error. */
static int read_span(int fd, PyObject *blocks, PyObject *locate, unsigned long long va,
                     Py_ssize_t length, const piece *pieces, Py_ssize_t npieces,
                     unsigned char *buf)
{
    long long offset = block_offset(blocks, locate, va);
    if (offset < 0)
        return offset == -2 ? -1 : 0;
    unsigned long long within = va & (BLOCK_SIZE - 1);
    if (within + (unsigned long long)length > BLOCK_SIZE) {
        /* crosses into the next block: readable so only when the file holds
         * that block right after this one */
        unsigned long long next_va = (va & ~(BLOCK_SIZE - 1)) + BLOCK_SIZE;
        if (next_va == 0)
            return 0;
        long long next = block_offset(blocks, locate, next_va);
        if (next == -2)
            return -1;
        if (next != offset + (long long)BLOCK_SIZE)
            return 0;
    }
    for (Py_ssize_t i = 0; i < npieces; i++) {
        Py_ssize_t done = 0, size = pieces[i].length;
        unsigned char *to = buf + pieces[i].start;
        off_t from = (off_t)(offset + within + pieces[i].start);
        while (done < size) {
            ssize_t n = pread(fd, to + done, (size_t)(size - done), from + done);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                return 0; /* past the end, or an I/O error: the Python path says which */
            done += n;
        }
    }
    return 1;
}

/* The stretches of the span the fields lie in, in order: fields closer than
 * PIECE_GAP bytes share a read. A read's own cost (the system call, the page
 * look-up) is about that of copying 1 KiB more from memory the CPU has not
 * cached: 6.1 x86_64's task span is 36 bytes, a 2,136-byte gap, then 888. */
static Py_ssize_t plan_pieces(const field *fields, Py_ssize_t count, piece *pieces)
{
    Py_ssize_t order[MAX_FIELDS], n = 0, npieces = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (fields[i].size == 0)
            continue;
        Py_ssize_t j = n++;
        while (j > 0 && fields[order[j - 1]].offset > fields[i].offset) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        const field *f = &fields[order[k]];
        piece *last = npieces ? &pieces[npieces - 1] : NULL;
        if (last && f->offset <= last->start + last->length + PIECE_GAP) {
            Py_ssize_t end = f->offset + f->size;
            if (end > last->start + last->length)
                last->length = end - last->start;
        } else {
            pieces[npieces].start = f->offset;
            pieces[npieces].length = f->size;
            npieces++;
        }
    }
    return npieces;
}

static PyObject *unpack(const unsigned char *buf, const field *fields, Py_ssize_t count,
                        int big_endian)
{
    PyObject *tuple = PyTuple_New(count);
    if (tuple == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        const field *f = &fields[i];
        PyObject *item;
        if (f->kind == BYTES) {
            item = PyBytes_FromStringAndSize((const char *)buf + f->offset, f->size);
        } else {
            unsigned long long v = 0;
            const unsigned char *p = buf + f->offset;
            for (Py_ssize_t b = 0; b < f->size; b++)
                v |= (unsigned long long)p[big_endian ? f->size - 1 - b : b] << (8 * b);
            if (f->kind == SIGNED && f->size > 0 && f->size < 8 &&
                (v >> (8 * f->size - 1)) & 1)
                v |= ~0ULL << (8 * f->size);
            item = f->kind == SIGNED ? PyLong_FromLongLong((long long)v)
                                     : PyLong_FromUnsignedLongLong(v);
        }
        if (item == NULL) {
            Py_DECREF(tuple);
            return NULL;
        }
        PyTuple_SET_ITEM(tuple, i, item);
    }
    return tuple;
}

static int parse_layout(PyObject *layout, field *fields, Py_ssize_t *count, Py_ssize_t span)
{
    if (!PyTuple_Check(layout) || PyTuple_GET_SIZE(layout) > MAX_FIELDS) {
        PyErr_SetString(PyExc_ValueError, "layout: a tuple of at most 64 (offset, size, kind)");
        return -1;
    }
    *count = PyTuple_GET_SIZE(layout);
    for (Py_ssize_t i = 0; i < *count; i++) {
        field *f = &fields[i];
        PyObject *item = PyTuple_GET_ITEM(layout, i);
        if (!PyTuple_Check(item)) {
            PyErr_Format(PyExc_TypeError, "layout: field %zd is not a tuple", i);
            return -1;
        }
        if (!PyArg_ParseTuple(item, "nni", &f->offset, &f->size, &f->kind))
            return -1;
        int bad = f->offset < 0 || f->size < 0 || f->offset > span ||
                  f->size > span - f->offset || f->kind < UNSIGNED || f->kind > BYTES ||
                  (f->kind != BYTES && f->size > 8);
        if (bad) {
            PyErr_Format(PyExc_ValueError, "layout: field %zd does not fit the span", i);
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(walk_spans_doc,
"walk_spans(fd, blocks, locate, node, head, link_offset, span_start, span_length,\n"
"           layout, next_field, mask, big_endian, limit, seen, out, found)\n"
"-> (node, steps)\n\n"
"Follow the list from `node` (a .next read already) until `head`, for at most\n"
"`limit` steps. For each node not in `seen`: the structure is at\n"
"node - link_offset; read span_length bytes at structure + span_start through\n"
"a 2 MiB block `locate(block_va)` places in the file (its offset, or -1),\n"
"cached in `blocks`; unpack `layout`, a tuple of (offset in the span, size,\n"
"kind: 0 unsigned, 1 signed, 2 bytes), into a tuple appended to `found`;\n"
"append the structure's address to `out`, add the node to `seen`, and go on\n"
"to the value of field `next_field`. Addresses wrap at `mask`. Stops at the\n"
"head, a node in `seen`, a span it cannot read or the limit, returning the\n"
"node it stopped at and the structures it took.");

static PyObject *walk_spans(PyObject *self, PyObject *args)
{
    (void)self;
    int fd, big_endian;
    PyObject *blocks, *locate, *layout, *seen, *out, *found;
    unsigned long long node, head, link_offset, span_start, mask;
    Py_ssize_t span_length, next_field, limit;
    if (!PyArg_ParseTuple(args, "iO!OKKKKnO!nKpnO!O!O!", &fd, &PyDict_Type, &blocks, &locate,
                          &node, &head, &link_offset, &span_start, &span_length,
                          &PyTuple_Type, &layout, &next_field, &mask, &big_endian, &limit,
                          &PySet_Type, &seen, &PyList_Type, &out, &PyList_Type, &found))
        return NULL;
    if (span_length <= 0 || span_length > MAX_SPAN) {
        PyErr_SetString(PyExc_ValueError, "span_length out of range");
        return NULL;
    }
    field fields[MAX_FIELDS];
    Py_ssize_t count;
    if (parse_layout(layout, fields, &count, span_length) < 0)
        return NULL;
    if (next_field < 0 || next_field >= count || fields[next_field].kind != UNSIGNED) {
        PyErr_SetString(PyExc_ValueError, "next_field is not an unsigned field of the layout");
        return NULL;
    }
    piece pieces[MAX_FIELDS];
    Py_ssize_t npieces = plan_pieces(fields, count, pieces);
    unsigned char *buf = PyMem_Calloc(1, (size_t)span_length);
    if (buf == NULL)
        return PyErr_NoMemory();
    Py_ssize_t steps = 0;
    int failed = 0;
    PyObject *key = NULL; /* node as a Python int: after a step, the link just read */
    node &= mask;
    /* a node below link_offset puts its structure below address 0: the Python loop judges it */
    while (steps < limit && node != head && node >= link_offset) {
        if (key == NULL && (key = PyLong_FromUnsignedLongLong(node)) == NULL) {
            failed = 1;
            break;
        }
        int met = PySet_Contains(seen, key);
        if (met != 0) {
            failed = met < 0;
            break;
        }
        unsigned long long entry = node - link_offset;
        int got = read_span(fd, blocks, locate, (entry + span_start) & mask, span_length, pieces,
                            npieces, buf);
        if (got <= 0) {
            failed = got < 0;
            break;
        }
        PyObject *values = unpack(buf, fields, count, big_endian);
        PyObject *address = values ? PyLong_FromUnsignedLongLong(entry) : NULL;
        int bad = address == NULL || PySet_Add(seen, key) < 0 ||
                  PyList_Append(out, address) < 0 || PyList_Append(found, values) < 0;
        Py_XDECREF(address);
        Py_CLEAR(key);
        unsigned long long next = 0;
        if (!bad) {
            PyObject *link = PyTuple_GET_ITEM(values, next_field);
            next = PyLong_AsUnsignedLongLong(link);
            bad = next == (unsigned long long)-1 && PyErr_Occurred();
            if (!bad && (next & mask) == next) {
                key = link; /* the next node's key, already made */
                Py_INCREF(key);
            }
        }
        Py_XDECREF(values);
        if (bad) {
            failed = 1;
            break;
        }
        node = next & mask;
        steps++;
    }
    Py_XDECREF(key);
    PyMem_Free(buf);
    if (failed)
        return NULL;
    return Py_BuildValue("(Kn)", node, steps);
}

/* The members of a task's span as walk_spans gives them (linux/tasks.py's
 * _Span.NAMES order), and the record build_task_records makes of them. */
enum { PID, TGID, COMM, PARENT, STATE, EXIT_STATE, CPU, ON_CPU, TASKS, SIGNAL, LINK, PREV,
       NMEMBERS };

/* The record of one task, or NULL with no exception set when a cache misses. */
static PyObject *task_record(PyObject *entry, PyObject *m, PyObject *task_type,
                             PyObject *registers, PyObject *comms, PyObject *states,
                             PyObject *tgids)
{
    PyObject *comm = PyDict_GetItemWithError(comms, PyTuple_GET_ITEM(m, COMM)); /* borrowed */
    if (comm == NULL)
        return NULL;
    PyObject *key = PyTuple_Pack(2, PyTuple_GET_ITEM(m, STATE), PyTuple_GET_ITEM(m, EXIT_STATE));
    if (key == NULL)
        return NULL;
    PyObject *letter = PyDict_GetItemWithError(states, key); /* borrowed */
    Py_DECREF(key);
    if (letter == NULL)
        return NULL;
    PyObject *parent = PyTuple_GET_ITEM(m, PARENT);
    PyObject *ppid; /* borrowed */
    static PyObject *zero = NULL;
    if (zero == NULL && (zero = PyLong_FromLong(0)) == NULL)
        return NULL;
    int none = PyObject_Not(parent);
    int own = none ? 0 : PyObject_RichCompareBool(parent, entry, Py_EQ);
    if (none < 0 || own < 0)
        return NULL;
    if (none || own)
        ppid = zero; /* no parent, or its own (init_task): ppid 0 */
    else if ((ppid = PyDict_GetItemWithError(tgids, parent)) == NULL)
        return NULL;
    int running = PyObject_IsTrue(PyTuple_GET_ITEM(m, ON_CPU));
    if (running < 0)
        return NULL;
    PyObject *args[] = {
        entry, PyTuple_GET_ITEM(m, PID), PyTuple_GET_ITEM(m, TGID), ppid, comm, letter,
        PyTuple_GET_ITEM(m, CPU), running ? Py_True : Py_False, Py_False, registers,
    };
    /* held across the call: the dicts lent them, and Python code runs in it */
    Py_INCREF(comm);
    Py_INCREF(letter);
    Py_INCREF(ppid);
    PyObject *task = PyObject_Vectorcall(task_type, args, 10, NULL);
    Py_DECREF(comm);
    Py_DECREF(letter);
    Py_DECREF(ppid);
    if (task == NULL)
        return NULL;
    PyObject *record = PyTuple_Pack(5, task, PyTuple_GET_ITEM(m, TASKS), PyTuple_GET_ITEM(m, SIGNAL),
                                    PyTuple_GET_ITEM(m, LINK), PyTuple_GET_ITEM(m, PREV));
    Py_DECREF(task);
    return record;
}

PyDoc_STRVAR(build_task_records_doc,
"build_task_records(addresses, found, task_type, registers, comms, states, tgids,\n"
"                   records, record) -> None\n\n"
"linux/tasks.py's TaskReader._record for each task walk_spans read: for the\n"
"task at addresses[i] with members found[i] (in _Span.NAMES order) not in\n"
"`records` yet, records[address] = (task_type(address, pid, tgid, ppid, comm,\n"
"letter, cpu, on_cpu != 0, False, registers), tasks, signal, thread link .next,\n"
"thread link .prev), its comm from `comms` (raw bytes -> str), its letter from\n"
"`states` ((state, exit_state) -> str) and its ppid from `tgids` (parent ->\n"
"tgid; 0 with no parent or itself as parent). Where one of those has no entry\n"
"yet, record(address, members) makes the record, in Python, and fills it.");

static PyObject *build_task_records(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *addresses, *found, *task_type, *registers, *comms, *states, *tgids, *records,
        *fallback;
    if (!PyArg_ParseTuple(args, "O!O!OOO!O!O!O!O", &PyList_Type, &addresses, &PyList_Type, &found,
                          &task_type, &registers, &PyDict_Type, &comms, &PyDict_Type, &states,
                          &PyDict_Type, &tgids, &PyDict_Type, &records, &fallback))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(found);
    if (PyList_GET_SIZE(addresses) != n) {
        PyErr_SetString(PyExc_ValueError, "addresses and found differ in length");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *entry = PyList_GET_ITEM(addresses, i);
        PyObject *m = PyList_GET_ITEM(found, i);
        if (!PyTuple_Check(m) || PyTuple_GET_SIZE(m) != NMEMBERS) {
            PyErr_Format(PyExc_ValueError, "found[%zd] is not a task's %d members", i, NMEMBERS);
            return NULL;
        }
        int known = PyDict_Contains(records, entry);
        if (known < 0)
            return NULL;
        if (known)
            continue;
        PyObject *record = task_record(entry, m, task_type, registers, comms, states, tgids);
        if (record == NULL && PyErr_Occurred())
            return NULL;
        if (record == NULL) { /* a cache missed: the Python way, which fills it */
            PyObject *made = PyObject_CallFunctionObjArgs(fallback, entry, m, NULL);
            if (made == NULL)
                return NULL;
            Py_DECREF(made);
            continue;
        }
        int bad = PyDict_SetItem(records, entry, record);
        Py_DECREF(record);
        if (bad < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"walk_spans", walk_spans, METH_VARARGS, walk_spans_doc},
    {"build_task_records", build_task_records, METH_VARARGS, build_task_records_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kvmcore._listwalk",
    "The hot loop of a kernel list walk (linux/tasks.py), in C; optional.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__listwalk(void) { return PyModule_Create(&module); }
