import CHDF5
import OperandoCore

// Typed wrappers over libhdf5 (the C library, 1.10 API), enough to write NeXus files: files,
// groups, attributes, whole datasets, appendable chunked and compressed datasets, hard links.
//
// Every identifier (`hid_t`) is owned by exactly one Swift object and closed exactly once: by
// `close()`, which reports HDF5's error, or when the object's last reference goes. Groups and
// datasets keep their file object alive, so a file is never closed under its objects; the file is
// opened with the close degree H5F_CLOSE_SEMI, so closing it while an object is still open fails
// loudly instead of leaving the file open behind the caller's back. Temporary identifiers
// (dataspaces, datatypes, property lists) are closed before the call that made them returns.
//
// libhdf5 prints its error stack on stderr by default. Every call here switches that off for its
// duration (H5Eget_auto2/H5Eset_auto2, per thread in a thread-safe build) and, on failure, reads
// the stack with H5Ewalk2 into the thrown `HDF5Error`.
//
// Values written from raw record bytes are little-endian, as records are; files are always
// written little-endian (the stored types are H5T_ORDER_LE copies of the native types).

/// A libhdf5 call that failed: which call, the object it worked on, and HDF5's own error stack.
public struct HDF5Error: Error, Sendable, CustomStringConvertible {
    /// The C function, e.g. `H5Fcreate`.
    public var call: String
    /// The file, or the file and the object's path in it (`run.nxs:/entry/pstat_ei/E`).
    public var path: String
    /// HDF5's error stack, outermost first (function: description (minor error)).
    public var message: String

    public init(call: String, path: String, message: String) {
        self.call = call
        self.path = path
        self.message = message
    }

    public var description: String { "HDF5 \(call) failed for \(path): \(message)" }
}

/// Library-wide facts and the call wrapper every other type here goes through.
public enum HDF5 {
    /// `H5get_libversion`: the libhdf5 this process runs with, e.g. "1.10.8".
    public static var libraryVersion: String {
        var major: UInt32 = 0
        var minor: UInt32 = 0
        var release: UInt32 = 0
        guard H5get_libversion(&major, &minor, &release) >= 0 else { return "unknown" }
        return "\(major).\(minor).\(release)"
    }

    /// `H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL)`: identifiers of files, groups, datasets,
    /// named datatypes and attributes open in this process. 0 when everything was closed.
    public static var openObjectCount: Int {
        H5open()
        // H5F_OBJ_ALL, spelled out: Swift does not import the macro that ORs these together.
        let all = H5F_OBJ_FILE | H5F_OBJ_DATASET | H5F_OBJ_GROUP | H5F_OBJ_DATATYPE | H5F_OBJ_ATTR
        return Int(H5Fget_obj_count(hid_t(all), UInt32(all)))
    }

    /// Runs one libhdf5 call with automatic error printing off; a negative result throws an
    /// `HDF5Error` carrying `name`, `path` and the error stack.
    @discardableResult
    static func call<R: BinaryInteger>(_ name: String, _ path: String, _ body: () -> R) throws(HDF5Error) -> R {
        var savedFunction: H5E_auto2_t?
        var savedData: UnsafeMutableRawPointer?
        let stack = hid_t(H5E_DEFAULT)
        let saved = H5Eget_auto2(stack, &savedFunction, &savedData) >= 0
        H5Eset_auto2(stack, nil, nil)
        let result = body()
        let failure = result < 0 ? HDF5Error(call: name, path: path, message: errorStack()) : nil
        if saved { H5Eset_auto2(stack, savedFunction, savedData) }
        if let failure { throw failure }
        return result
    }

    /// The calling thread's error stack as one line (`H5Ewalk2`, downward: the API call first,
    /// the root cause last), then clears it.
    static func errorStack() -> String {
        final class Lines { var items: [String] = [] }
        let lines = Lines()
        let stack = hid_t(H5E_DEFAULT)
        withExtendedLifetime(lines) {
            _ = H5Ewalk2(
                stack, H5E_WALK_DOWNWARD,
                { _, error, context in
                    guard let error, let context else { return 0 }
                    let e = error.pointee
                    var text = (e.func_name.map { String(cString: $0) } ?? "?") + "(): " + (e.desc.map { String(cString: $0) } ?? "")
                    let minor = HDF5.errorMessage(e.min_num)
                    if !minor.isEmpty { text += " (\(minor))" }
                    Unmanaged<Lines>.fromOpaque(context).takeUnretainedValue().items.append(text)
                    return 0
                }, Unmanaged.passUnretained(lines).toOpaque())
        }
        H5Eclear2(stack)
        return lines.items.isEmpty ? "no message on HDF5's error stack" : lines.items.joined(separator: "; ")
    }

    /// `H5Eget_msg`: the text of a major or minor error number.
    static func errorMessage(_ id: hid_t) -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard H5Eget_msg(id, nil, &buffer, buffer.count) > 0 else { return "" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// A temporary identifier (dataspace, datatype, property list) closed when it goes out of scope.
struct HDF5Temporary: ~Copyable {
    let id: hid_t
    private let close: (hid_t) -> herr_t

    /// Wraps the result of `create` (named `name` for errors), closing it later with `close`.
    init(_ name: String, _ path: String, close: @escaping (hid_t) -> herr_t, _ create: () -> hid_t) throws(HDF5Error) {
        id = try HDF5.call(name, path, create)
        self.close = close
    }

    deinit { _ = try? HDF5.call("close", "temporary") { close(id) } }
}

/// A fixed-size element type: integers of 8 to 64 bits and IEEE floats. Files store them
/// little-endian (H5T_STD_*LE, H5T_IEEE_F*LE); memory holds them natively (H5T_NATIVE_*).
public struct HDF5ElementType: Sendable, Hashable, CustomStringConvertible {
    enum Base: Sendable, Hashable { case int8, uint8, int16, uint16, int32, uint32, int64, uint64, float32, float64 }
    let base: Base

    public static let int8 = HDF5ElementType(base: .int8)
    public static let uint8 = HDF5ElementType(base: .uint8)
    public static let int16 = HDF5ElementType(base: .int16)
    public static let uint16 = HDF5ElementType(base: .uint16)
    public static let int32 = HDF5ElementType(base: .int32)
    public static let uint32 = HDF5ElementType(base: .uint32)
    public static let int64 = HDF5ElementType(base: .int64)
    public static let uint64 = HDF5ElementType(base: .uint64)
    public static let float32 = HDF5ElementType(base: .float32)
    public static let float64 = HDF5ElementType(base: .float64)

    /// The HDF5 type of a stream's elements; nil for JSON (not a fixed-size number).
    public init?(_ type: ElementType) {
        switch type {
        case .uint8: base = .uint8
        case .uint16: base = .uint16
        case .uint32: base = .uint32
        case .uint64: base = .uint64
        case .int16: base = .int16
        case .int32: base = .int32
        case .int64: base = .int64
        case .float32: base = .float32
        case .float64: base = .float64
        case .json: return nil
        }
    }

    init(base: Base) { self.base = base }

    /// Bytes per element.
    public var size: Int {
        switch base {
        case .int8, .uint8: 1
        case .int16, .uint16: 2
        case .int32, .uint32, .float32: 4
        case .int64, .uint64, .float64: 8
        }
    }

    public var description: String { "\(base)" }

    /// The predefined native type (H5T_NATIVE_*): owned by the library, never closed.
    var native: hid_t {
        switch base {
        case .int8: coperando_h5t_native_int8()
        case .uint8: coperando_h5t_native_uint8()
        case .int16: coperando_h5t_native_int16()
        case .uint16: coperando_h5t_native_uint16()
        case .int32: coperando_h5t_native_int32()
        case .uint32: coperando_h5t_native_uint32()
        case .int64: coperando_h5t_native_int64()
        case .uint64: coperando_h5t_native_uint64()
        case .float32: coperando_h5t_native_float()
        case .float64: coperando_h5t_native_double()
        }
    }

    /// A little-endian copy of the native type (H5Tcopy, H5Tset_order(H5T_ORDER_LE)).
    func littleEndian(_ path: String) throws(HDF5Error) -> HDF5Temporary {
        let native = native
        let t = try HDF5Temporary("H5Tcopy", path, close: H5Tclose) { H5Tcopy(native) }
        try HDF5.call("H5Tset_order", path) { H5Tset_order(t.id, H5T_ORDER_LE) }
        return t
    }
}

/// Swift numbers with an HDF5 element type, for typed datasets and attributes.
public protocol HDF5Scalar {
    static var hdf5Type: HDF5ElementType { get }
}

extension Int8: HDF5Scalar { public static var hdf5Type: HDF5ElementType { .int8 } }
extension UInt8: HDF5Scalar { public static var hdf5Type: HDF5ElementType { .uint8 } }
extension Int16: HDF5Scalar { public static var hdf5Type: HDF5ElementType { .int16 } }
extension UInt16: HDF5Scalar { public static var hdf5Type: HDF5ElementType { .uint16 } }
extension Int32: HDF5Scalar { public static var hdf5Type: HDF5ElementType { .int32 } }
extension UInt32: HDF5Scalar { public static var hdf5Type: HDF5ElementType { .uint32 } }
extension Int64: HDF5Scalar { public static var hdf5Type: HDF5ElementType { .int64 } }
extension UInt64: HDF5Scalar { public static var hdf5Type: HDF5ElementType { .uint64 } }
extension Int: HDF5Scalar { public static var hdf5Type: HDF5ElementType { MemoryLayout<Int>.size == 8 ? .int64 : .int32 } }
extension Float: HDF5Scalar { public static var hdf5Type: HDF5ElementType { .float32 } }
extension Double: HDF5Scalar { public static var hdf5Type: HDF5ElementType { .float64 } }

/// How an appendable dataset is stored: chunked (required to extend a dataset), and compressed.
public struct HDF5Chunking: Sendable, Equatable {
    /// Rows (along the first, unlimited dimension) per chunk.
    public var rows: Int
    /// Elements of a row per chunk (2-D datasets with very long rows); nil: whole rows.
    public var rowElements: Int?
    /// zlib level 1…9 (H5Pset_deflate), or nil for no compression.
    public var deflateLevel: Int?
    /// Byte shuffle before compression (H5Pset_shuffle): numbers compress far better.
    public var shuffle: Bool

    public init(rows: Int, rowElements: Int? = nil, deflateLevel: Int? = 4, shuffle: Bool = true) {
        self.rows = max(1, rows)
        self.rowElements = rowElements.map { max(1, $0) }
        self.deflateLevel = deflateLevel
        self.shuffle = shuffle
    }

    /// Chunks of about `targetBytes` (default 512 KiB) for rows of `rowElements` elements of
    /// `elementSize` bytes: whole rows when a row fits, else one row split along its length.
    public static func sized(rowElements: Int, elementSize: Int, targetBytes: Int = 512 << 10, deflateLevel: Int? = 4, shuffle: Bool = true) -> HDF5Chunking {
        let rowBytes = max(1, rowElements * elementSize)
        if rowBytes <= targetBytes {
            return HDF5Chunking(rows: targetBytes / rowBytes, deflateLevel: deflateLevel, shuffle: shuffle)
        }
        return HDF5Chunking(rows: 1, rowElements: max(1, targetBytes / max(1, elementSize)), deflateLevel: deflateLevel, shuffle: shuffle)
    }
}

/// An open HDF5 object: a file, a group or a dataset. Attributes can be set on any of them.
public class HDF5Object {
    enum Kind { case file, group, dataset }

    let id: hid_t
    let kind: Kind
    /// The object's path in its file ("/" for a file).
    public let path: String
    /// The file's name on disk.
    public let fileName: String
    /// The file this object lives in, kept open while the object is (nil for the file itself).
    let owner: HDF5File?
    public private(set) var isOpen = true

    init(id: hid_t, kind: Kind, path: String, fileName: String, owner: HDF5File?) {
        self.id = id
        self.kind = kind
        self.path = path
        self.fileName = fileName
        self.owner = owner
    }

    deinit {
        if isOpen { _ = try? closeIdentifier() }
    }

    /// Closes the object (H5Fclose, H5Gclose or H5Dclose); closing twice does nothing. When
    /// HDF5 refuses (a file with objects still open), the object stays open: close those first,
    /// or it is closed when its last reference goes.
    public func close() throws(HDF5Error) {
        guard isOpen else { return }
        try closeIdentifier()
        isOpen = false
    }

    func closeIdentifier() throws(HDF5Error) {
        let id = id
        switch kind {
        case .file: try HDF5.call("H5Fclose", where_) { H5Fclose(id) }
        case .group: try HDF5.call("H5Gclose", where_) { H5Gclose(id) }
        case .dataset: try HDF5.call("H5Dclose", where_) { H5Dclose(id) }
        }
    }

    /// The object for error messages: `file.nxs:/entry/data`.
    var where_: String { kind == .file ? fileName : "\(fileName):\(path)" }

    func childPath(_ name: String) -> String { path == "/" ? "/" + name : path + "/" + name }

    /// The identifier, or an error naming `call` when the object was closed already.
    func liveID(_ call: String) throws(HDF5Error) -> hid_t {
        guard isOpen else { throw HDF5Error(call: call, path: where_, message: "the object was closed already") }
        return id
    }

    // MARK: Attributes

    /// Creates attribute `name` (replacing one of that name) and writes `write`'s buffer into it.
    func writeAttribute(_ name: String, type: hid_t, memoryType: hid_t, dimensions: [Int]?, _ buffer: UnsafeRawPointer?) throws(HDF5Error) {
        let id = try liveID("H5Acreate2")
        let at = "\(where_)@\(name)"
        if try HDF5.call("H5Aexists", at, { H5Aexists(id, name) }) > 0 {
            try HDF5.call("H5Adelete", at) { H5Adelete(id, name) }
        }
        let space = try HDF5Temporary.dataspace(dimensions, at)
        let attribute = try HDF5Temporary("H5Acreate2", at, close: H5Aclose) { H5Acreate2(id, name, type, space.id, hid_t(H5P_DEFAULT), hid_t(H5P_DEFAULT)) }
        if let buffer { try HDF5.call("H5Awrite", at) { H5Awrite(attribute.id, memoryType, buffer) } }
    }

    /// A scalar string attribute (variable-length UTF-8, as h5py writes them).
    public func setAttribute(_ name: String, _ value: String) throws(HDF5Error) {
        try setAttribute(name, strings: [value], scalar: true)
    }

    /// A 1-D array attribute of strings (variable-length UTF-8), e.g. NXdata's `axes`.
    public func setAttribute(_ name: String, _ values: [String]) throws(HDF5Error) {
        try setAttribute(name, strings: values, scalar: false)
    }

    func setAttribute(_ name: String, strings values: [String], scalar: Bool) throws(HDF5Error) {
        let type = try HDF5Temporary.utf8String("\(where_)@\(name)")
        try HDF5CStrings.with(values) { (pointers) throws(HDF5Error) in
            try writeAttribute(
                name, type: type.id, memoryType: type.id, dimensions: scalar ? nil : [values.count], values.isEmpty ? nil : UnsafeRawPointer(pointers))
        }
    }

    /// A scalar numeric attribute, stored little-endian in its own type.
    public func setAttribute<T: HDF5Scalar>(_ name: String, _ value: T) throws(HDF5Error) {
        var value = value
        let type = try T.hdf5Type.littleEndian("\(where_)@\(name)")
        try withUnsafeBytes(of: &value) { (b) throws(HDF5Error) in
            try writeAttribute(name, type: type.id, memoryType: T.hdf5Type.native, dimensions: nil, b.baseAddress)
        }
    }

    /// A 1-D numeric array attribute.
    public func setAttribute<T: HDF5Scalar>(_ name: String, _ values: [T]) throws(HDF5Error) {
        let type = try T.hdf5Type.littleEndian("\(where_)@\(name)")
        try withBytes(of: values) { (b) throws(HDF5Error) in
            try writeAttribute(name, type: type.id, memoryType: T.hdf5Type.native, dimensions: [values.count], values.isEmpty ? nil : b.baseAddress)
        }
    }
}

extension HDF5Temporary {
    /// `H5Screate(H5S_SCALAR)` for nil, else `H5Screate_simple` with these fixed dimensions.
    static func dataspace(_ dimensions: [Int]?, _ path: String) throws(HDF5Error) -> HDF5Temporary {
        guard let dimensions else { return try HDF5Temporary("H5Screate", path, close: H5Sclose) { H5Screate(H5S_SCALAR) } }
        let dims = dimensions.map { hsize_t($0) }
        return try HDF5Temporary("H5Screate_simple", path, close: H5Sclose) { H5Screate_simple(Int32(dims.count), dims, nil) }
    }

    /// A variable-length UTF-8 string type: H5Tcopy(H5T_C_S1), H5Tset_size(H5T_VARIABLE), H5Tset_cset(H5T_CSET_UTF8).
    static func utf8String(_ path: String) throws(HDF5Error) -> HDF5Temporary {
        let t = try HDF5Temporary("H5Tcopy", path, close: H5Tclose) { H5Tcopy(coperando_h5t_c_s1()) }
        // H5T_VARIABLE is (size_t)-1, a macro Swift does not import.
        try HDF5.call("H5Tset_size", path) { H5Tset_size(t.id, Int(bitPattern: UInt.max)) }
        try HDF5.call("H5Tset_cset", path) { H5Tset_cset(t.id, H5T_CSET_UTF8) }
        return t
    }

    /// h5py's boolean: an 8-bit enum {FALSE = 0, TRUE = 1} (H5Tenum_create, H5Tenum_insert).
    static func boolean(_ path: String) throws(HDF5Error) -> HDF5Temporary {
        let t = try HDF5Temporary("H5Tenum_create", path, close: H5Tclose) { H5Tenum_create(coperando_h5t_native_int8()) }
        var no: Int8 = 0
        var yes: Int8 = 1
        try HDF5.call("H5Tenum_insert", path) { H5Tenum_insert(t.id, "FALSE", &no) }
        try HDF5.call("H5Tenum_insert", path) { H5Tenum_insert(t.id, "TRUE", &yes) }
        return t
    }
}

/// `Array.withUnsafeBytes` for a body with typed throws (the standard one rethrows `any Error`).
func withBytes<T, R>(of values: [T], _ body: (UnsafeRawBufferPointer) throws(HDF5Error) -> R) throws(HDF5Error) -> R {
    let result: Result<R, HDF5Error> = values.withUnsafeBytes { b in Result { () throws(HDF5Error) -> R in try body(b) } }
    return try result.get()
}

/// NUL-terminated copies of strings in one buffer, and an array of pointers into it: the memory
/// layout of a variable-length string array. A string holding NUL ends there.
enum HDF5CStrings {
    static func with<R, E: Error>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) throws(E) -> R) throws(E) -> R {
        var bytes: [CChar] = []
        var offsets: [Int] = []
        offsets.reserveCapacity(strings.count)
        for s in strings {
            offsets.append(bytes.count)
            bytes.append(contentsOf: s.utf8.map { CChar(bitPattern: $0) })
            bytes.append(0)
        }
        if bytes.isEmpty { bytes.append(0) }
        return try bytes.withUnsafeBufferPointer { (base) throws(E) -> R in
            let pointers: [UnsafePointer<CChar>?] = offsets.map { base.baseAddress! + $0 }
            return try pointers.withUnsafeBufferPointer { (p) throws(E) -> R in
                // An empty list still needs a valid address; nothing is read from it.
                try withUnsafeTemporaryAllocation(of: UnsafePointer<CChar>?.self, capacity: 1) { (spare) throws(E) -> R in
                    spare.initialize(repeating: nil)
                    return try body(p.baseAddress ?? UnsafePointer(spare.baseAddress!))
                }
            }
        }
    }
}

/// A file or a group: holds groups, datasets and links.
public class HDF5Container: HDF5Object {
    /// `H5Gcreate2`; with `nxClass`, sets the NeXus class attribute `NX_class`.
    public func createGroup(_ name: String, nxClass: String? = nil) throws(HDF5Error) -> HDF5Group {
        let parent = try liveID("H5Gcreate2")
        let path = childPath(name)
        let id = try HDF5.call("H5Gcreate2", "\(fileName):\(path)") { H5Gcreate2(parent, name, hid_t(H5P_DEFAULT), hid_t(H5P_DEFAULT), hid_t(H5P_DEFAULT)) }
        let group = HDF5Group(id: id, kind: .group, path: path, fileName: fileName, owner: file)
        if let nxClass { try group.setAttribute("NX_class", nxClass) }
        return group
    }

    /// The file object behind this container.
    var file: HDF5File { owner ?? (self as! HDF5File) }

    /// `H5Dcreate2` of `name` with `type` over `space` and the creation properties `dcpl`.
    func createDataset(_ name: String, type: hid_t, space: hid_t, dcpl: hid_t, rows: Int, rowShape: [Int], elementType: HDF5ElementType?) throws(HDF5Error)
        -> HDF5Dataset
    {
        let parent = try liveID("H5Dcreate2")
        let path = childPath(name)
        let id = try HDF5.call("H5Dcreate2", "\(fileName):\(path)") { H5Dcreate2(parent, name, type, space, hid_t(H5P_DEFAULT), dcpl, hid_t(H5P_DEFAULT)) }
        return HDF5Dataset(id: id, path: path, fileName: fileName, owner: file, rows: rows, rowShape: rowShape, elementType: elementType)
    }

    /// `H5Dwrite` of a whole dataset from `buffer`.
    func writeAll(_ dataset: HDF5Dataset, memoryType: hid_t, _ buffer: UnsafeRawPointer?) throws(HDF5Error) {
        guard let buffer else { return }
        try HDF5.call("H5Dwrite", dataset.where_) { H5Dwrite(dataset.id, memoryType, coperando_h5s_all(), coperando_h5s_all(), hid_t(H5P_DEFAULT), buffer) }
    }

    /// A scalar string dataset (variable-length UTF-8).
    @discardableResult
    public func writeScalar(_ name: String, _ value: String) throws(HDF5Error) -> HDF5Dataset {
        try writeStrings(name, [value], scalar: true)
    }

    /// A scalar numeric dataset, little-endian in its own type.
    @discardableResult
    public func writeScalar<T: HDF5Scalar>(_ name: String, _ value: T) throws(HDF5Error) -> HDF5Dataset {
        let at = "\(fileName):\(childPath(name))"
        let type = try T.hdf5Type.littleEndian(at)
        let space = try HDF5Temporary.dataspace(nil, at)
        let d = try createDataset(name, type: type.id, space: space.id, dcpl: hid_t(H5P_DEFAULT), rows: 1, rowShape: [], elementType: T.hdf5Type)
        var value = value
        try withUnsafeBytes(of: &value) { (b) throws(HDF5Error) in try writeAll(d, memoryType: T.hdf5Type.native, b.baseAddress) }
        return d
    }

    /// A scalar boolean dataset in h5py's representation (enum FALSE/TRUE over int8).
    @discardableResult
    public func writeScalar(_ name: String, _ value: Bool) throws(HDF5Error) -> HDF5Dataset {
        let at = "\(fileName):\(childPath(name))"
        let type = try HDF5Temporary.boolean(at)
        let space = try HDF5Temporary.dataspace(nil, at)
        let d = try createDataset(name, type: type.id, space: space.id, dcpl: hid_t(H5P_DEFAULT), rows: 1, rowShape: [], elementType: nil)
        var byte: Int8 = value ? 1 : 0
        try writeAll(d, memoryType: type.id, &byte)
        return d
    }

    /// A whole 1-D numeric dataset. Above `compressAbove` bytes it is chunked and compressed
    /// (deflate 4 with shuffle), below it is contiguous.
    @discardableResult
    public func writeDataset<T: HDF5Scalar>(_ name: String, _ values: [T], compressAbove: Int = 64 << 10) throws(HDF5Error) -> HDF5Dataset {
        let at = "\(fileName):\(childPath(name))"
        let type = try T.hdf5Type.littleEndian(at)
        let space = try HDF5Temporary.dataspace([values.count], at)
        let bytes = values.count * T.hdf5Type.size
        var chunking: HDF5Chunking? = bytes > compressAbove ? .sized(rowElements: 1, elementSize: T.hdf5Type.size) : nil
        // A fixed-size dataset's chunk may not be longer than the dataset.
        if let c = chunking { chunking = HDF5Chunking(rows: min(c.rows, max(1, values.count)), deflateLevel: c.deflateLevel, shuffle: c.shuffle) }
        let dcpl = try HDF5Temporary.datasetCreation(chunking, rank: 1, rowShape: [], at)
        let d = try createDataset(name, type: type.id, space: space.id, dcpl: dcpl.id, rows: values.count, rowShape: [], elementType: T.hdf5Type)
        try withBytes(of: values) { (b) throws(HDF5Error) in try writeAll(d, memoryType: T.hdf5Type.native, values.isEmpty ? nil : b.baseAddress) }
        return d
    }

    /// A whole 1-D dataset of variable-length UTF-8 strings.
    @discardableResult
    public func writeDataset(_ name: String, strings values: [String]) throws(HDF5Error) -> HDF5Dataset {
        try writeStrings(name, values, scalar: false)
    }

    func writeStrings(_ name: String, _ values: [String], scalar: Bool) throws(HDF5Error) -> HDF5Dataset {
        let at = "\(fileName):\(childPath(name))"
        let type = try HDF5Temporary.utf8String(at)
        let space = try HDF5Temporary.dataspace(scalar ? nil : [values.count], at)
        let d = try createDataset(name, type: type.id, space: space.id, dcpl: hid_t(H5P_DEFAULT), rows: values.count, rowShape: [], elementType: nil)
        try HDF5CStrings.with(values) { (p) throws(HDF5Error) in try writeAll(d, memoryType: type.id, values.isEmpty ? nil : UnsafeRawPointer(p)) }
        return d
    }

    /// An empty dataset to append rows to: shape [0] + `rowShape`, unlimited along the first
    /// dimension (H5S_UNLIMITED), chunked and compressed as `chunking` says.
    public func createAppendableDataset(_ name: String, type: HDF5ElementType, rowShape: [Int] = [], chunking: HDF5Chunking) throws(HDF5Error) -> HDF5Dataset {
        let at = "\(fileName):\(childPath(name))"
        let fileType = try type.littleEndian(at)
        let dims = [hsize_t(0)] + rowShape.map { hsize_t($0) }
        let maxDims = [coperando_h5s_unlimited()] + rowShape.map { hsize_t($0) }
        let space = try HDF5Temporary("H5Screate_simple", at, close: H5Sclose) { H5Screate_simple(Int32(dims.count), dims, maxDims) }
        let dcpl = try HDF5Temporary.datasetCreation(chunking, rank: dims.count, rowShape: rowShape, at)
        return try createDataset(name, type: fileType.id, space: space.id, dcpl: dcpl.id, rows: 0, rowShape: rowShape, elementType: type)
    }

    /// `H5Lcreate_hard`: `name` in this container becomes another name of `object` (same data,
    /// same attributes).
    public func link(_ object: HDF5Object, as name: String) throws(HDF5Error) {
        let here = try liveID("H5Lcreate_hard")
        let there = try object.liveID("H5Lcreate_hard")
        try HDF5.call("H5Lcreate_hard", "\(fileName):\(childPath(name)) → \(object.path)") {
            H5Lcreate_hard(there, ".", here, name, hid_t(H5P_DEFAULT), hid_t(H5P_DEFAULT))
        }
    }
}

extension HDF5Temporary {
    /// Dataset creation properties: `H5Pcreate(H5P_DATASET_CREATE)`, and with chunking
    /// `H5Pset_chunk`, `H5Pset_shuffle`, `H5Pset_deflate`.
    static func datasetCreation(_ chunking: HDF5Chunking?, rank: Int, rowShape: [Int], _ path: String) throws(HDF5Error) -> HDF5Temporary {
        let p = try HDF5Temporary("H5Pcreate", path, close: H5Pclose) { H5Pcreate(coperando_h5p_dataset_create()) }
        guard let chunking else { return p }
        var chunk = [hsize_t(chunking.rows)] + rowShape.map { hsize_t(max(1, $0)) }
        if let along = chunking.rowElements, let last = rowShape.last, rank > 1 { chunk[rank - 1] = hsize_t(max(1, min(along, last))) }
        try HDF5.call("H5Pset_chunk", path) { H5Pset_chunk(p.id, Int32(rank), chunk) }
        if chunking.shuffle { try HDF5.call("H5Pset_shuffle", path) { H5Pset_shuffle(p.id) } }
        if let level = chunking.deflateLevel { try HDF5.call("H5Pset_deflate", path) { H5Pset_deflate(p.id, UInt32(min(9, max(0, level)))) } }
        return p
    }
}

/// An HDF5 file, created (or truncated) for writing.
public final class HDF5File: HDF5Container {
    /// `H5Fcreate(path, H5F_ACC_TRUNC)` with the close degree H5F_CLOSE_SEMI: `close()` fails
    /// while any group or dataset of the file is still open.
    public static func create(_ path: String) throws(HDF5Error) -> HDF5File {
        H5open()
        let fapl = try HDF5Temporary("H5Pcreate", path, close: H5Pclose) { H5Pcreate(coperando_h5p_file_access()) }
        try HDF5.call("H5Pset_fclose_degree", path) { H5Pset_fclose_degree(fapl.id, H5F_CLOSE_SEMI) }
        // H5F_ACC_TRUNC is 0x0002 behind a macro that calls H5open(), which Swift cannot import.
        let truncate: UInt32 = 0x0002
        let id = try HDF5.call("H5Fcreate", path) { H5Fcreate(path, truncate, hid_t(H5P_DEFAULT), fapl.id) }
        return HDF5File(id: id, kind: .file, path: "/", fileName: path, owner: nil)
    }

    /// `H5Fflush(H5F_SCOPE_LOCAL)`: writes buffered data and metadata to the file.
    public func flush() throws(HDF5Error) {
        let id = try liveID("H5Fflush")
        try HDF5.call("H5Fflush", fileName) { H5Fflush(id, H5F_SCOPE_LOCAL) }
    }

    /// `H5Fget_filesize`: bytes of the file now.
    public func size() throws(HDF5Error) -> Int {
        let id = try liveID("H5Fget_filesize")
        var size: hsize_t = 0
        try HDF5.call("H5Fget_filesize", fileName) { H5Fget_filesize(id, &size) }
        return Int(size)
    }
}

/// A group in an HDF5 file.
public final class HDF5Group: HDF5Container {}

/// A dataset. Appendable ones (`createAppendableDataset`) grow by whole rows.
public final class HDF5Dataset: HDF5Object {
    /// Rows along the first dimension (elements, for a 1-D dataset; 1 for a scalar).
    public private(set) var rows: Int
    /// The shape of one row: [] for 1-D datasets, [n] for 2-D ones.
    public let rowShape: [Int]
    /// The stored element type (nil for strings and booleans).
    public let elementType: HDF5ElementType?
    /// Elements per row.
    public var rowElements: Int { rowShape.reduce(1, *) }

    init(id: hid_t, path: String, fileName: String, owner: HDF5File, rows: Int, rowShape: [Int], elementType: HDF5ElementType?) {
        self.rows = rows
        self.rowShape = rowShape
        self.elementType = elementType
        super.init(id: id, kind: .dataset, path: path, fileName: fileName, owner: owner)
    }

    /// Appends rows of little-endian elements of the dataset's type (e.g. record payloads):
    /// `bytes` holds `rows` × `rowElements` elements.
    public func append(rows count: Int, littleEndian bytes: UnsafeRawBufferPointer) throws(HDF5Error) {
        guard let type = elementType else { throw HDF5Error(call: "H5Dwrite", path: where_, message: "not a numeric dataset") }
        precondition(bytes.count == count * rowElements * type.size, "append: \(bytes.count) bytes are not \(count) rows of \(rowElements) \(type)")
        let memory = try type.littleEndian(where_)
        try append(count, memoryType: memory.id, bytes.baseAddress)
    }

    /// Appends native values (converted to the stored type if it differs): `values` holds whole rows.
    public func append<T: HDF5Scalar>(_ values: UnsafeBufferPointer<T>) throws(HDF5Error) {
        precondition(values.count % max(1, rowElements) == 0, "append: \(values.count) values are not whole rows of \(rowElements)")
        try append(values.count / max(1, rowElements), memoryType: T.hdf5Type.native, UnsafeRawPointer(values.baseAddress))
    }

    /// Appends native values (see `append(_:)` with a buffer).
    public func append<T: HDF5Scalar>(_ values: [T]) throws(HDF5Error) {
        let result: Result<Void, HDF5Error> = values.withUnsafeBufferPointer { b in Result { () throws(HDF5Error) in try append(b) } }
        try result.get()
    }

    /// Extends the dataset by `count` rows (H5Dset_extent) and writes them there: a hyperslab of
    /// the file space (H5Sselect_hyperslab) from a memory space of just those rows (H5Dwrite).
    func append(_ count: Int, memoryType: hid_t, _ buffer: UnsafeRawPointer?) throws(HDF5Error) {
        guard count > 0, let buffer else { return }
        let id = try liveID("H5Dset_extent")
        let at = where_
        let extent = [hsize_t(rows + count)] + rowShape.map { hsize_t($0) }
        try HDF5.call("H5Dset_extent", at) { H5Dset_extent(id, extent) }
        let fileSpace = try HDF5Temporary("H5Dget_space", at, close: H5Sclose) { H5Dget_space(id) }
        let start = [hsize_t(rows)] + rowShape.map { _ in hsize_t(0) }
        let size = [hsize_t(count)] + rowShape.map { hsize_t($0) }
        try HDF5.call("H5Sselect_hyperslab", at) { H5Sselect_hyperslab(fileSpace.id, H5S_SELECT_SET, start, nil, size, nil) }
        let memorySpace = try HDF5Temporary("H5Screate_simple", at, close: H5Sclose) { H5Screate_simple(Int32(size.count), size, nil) }
        try HDF5.call("H5Dwrite", at) { H5Dwrite(id, memoryType, memorySpace.id, fileSpace.id, hid_t(H5P_DEFAULT), buffer) }
        rows += count
    }
}
