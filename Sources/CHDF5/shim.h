#include <hdf5.h>

// HDF5's predefined types and property-list classes are macros over library globals that Swift
// cannot import; these return them. H5open() runs inside each macro, as in C.
static inline hid_t coperando_h5t_native_int8(void) { return H5T_NATIVE_INT8; }
static inline hid_t coperando_h5t_native_uint8(void) { return H5T_NATIVE_UINT8; }
static inline hid_t coperando_h5t_native_int16(void) { return H5T_NATIVE_INT16; }
static inline hid_t coperando_h5t_native_uint16(void) { return H5T_NATIVE_UINT16; }
static inline hid_t coperando_h5t_native_int32(void) { return H5T_NATIVE_INT32; }
static inline hid_t coperando_h5t_native_uint32(void) { return H5T_NATIVE_UINT32; }
static inline hid_t coperando_h5t_native_int64(void) { return H5T_NATIVE_INT64; }
static inline hid_t coperando_h5t_native_uint64(void) { return H5T_NATIVE_UINT64; }
static inline hid_t coperando_h5t_native_float(void) { return H5T_NATIVE_FLOAT; }
static inline hid_t coperando_h5t_native_double(void) { return H5T_NATIVE_DOUBLE; }
static inline hid_t coperando_h5t_c_s1(void) { return H5T_C_S1; }
static inline hid_t coperando_h5p_dataset_create(void) { return H5P_DATASET_CREATE; }
static inline hid_t coperando_h5p_file_access(void) { return H5P_FILE_ACCESS; }
static inline hid_t coperando_h5p_file_create(void) { return H5P_FILE_CREATE; }
static inline hid_t coperando_h5p_link_create(void) { return H5P_LINK_CREATE; }
static inline hid_t coperando_h5s_all(void) { return H5S_ALL; }
static inline hsize_t coperando_h5s_unlimited(void) { return H5S_UNLIMITED; }
