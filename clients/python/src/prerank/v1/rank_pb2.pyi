from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NullValue(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NULL_VALUE: _ClassVar[NullValue]
NULL_VALUE: NullValue

class RankRequest(_message.Message):
    __slots__ = ("request_id", "user", "candidates", "k", "model", "with_probability", "bucket")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WITH_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user: User
    candidates: _containers.RepeatedScalarFieldContainer[int]
    k: int
    model: str
    with_probability: bool
    bucket: str
    def __init__(self, request_id: _Optional[str] = ..., user: _Optional[_Union[User, _Mapping]] = ..., candidates: _Optional[_Iterable[int]] = ..., k: _Optional[int] = ..., model: _Optional[str] = ..., with_probability: bool = ..., bucket: _Optional[str] = ...) -> None: ...

class User(_message.Message):
    __slots__ = ("id", "features", "behaviors")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FeatureValue, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    BEHAVIORS_FIELD_NUMBER: _ClassVar[int]
    id: FeatureValue
    features: _containers.MessageMap[str, FeatureValue]
    behaviors: _containers.RepeatedCompositeFieldContainer[Behavior]
    def __init__(self, id: _Optional[_Union[FeatureValue, _Mapping]] = ..., features: _Optional[_Mapping[str, FeatureValue]] = ..., behaviors: _Optional[_Iterable[_Union[Behavior, _Mapping]]] = ...) -> None: ...

class Behavior(_message.Message):
    __slots__ = ("item_id", "fields")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FeatureValue, _Mapping]] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    fields: _containers.MessageMap[str, FeatureValue]
    def __init__(self, item_id: _Optional[int] = ..., fields: _Optional[_Mapping[str, FeatureValue]] = ...) -> None: ...

class FeatureValue(_message.Message):
    __slots__ = ("string_value", "int_value", "uint_value", "double_value", "bool_value", "null_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    UINT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    NULL_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    int_value: int
    uint_value: int
    double_value: float
    bool_value: bool
    null_value: NullValue
    def __init__(self, string_value: _Optional[str] = ..., int_value: _Optional[int] = ..., uint_value: _Optional[int] = ..., double_value: _Optional[float] = ..., bool_value: bool = ..., null_value: _Optional[_Union[NullValue, str]] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("request_id", "bucket", "model", "version", "items", "candidates", "unknown_candidates", "unknown_candidate_ids", "duplicate_candidates", "ignored_features", "dtype", "took_us")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    IGNORED_FEATURES_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    TOOK_US_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    bucket: str
    model: str
    version: int
    items: _containers.RepeatedCompositeFieldContainer[RankedItem]
    candidates: int
    unknown_candidates: int
    unknown_candidate_ids: _containers.RepeatedScalarFieldContainer[int]
    duplicate_candidates: int
    ignored_features: _containers.RepeatedScalarFieldContainer[str]
    dtype: str
    took_us: int
    def __init__(self, request_id: _Optional[str] = ..., bucket: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., items: _Optional[_Iterable[_Union[RankedItem, _Mapping]]] = ..., candidates: _Optional[int] = ..., unknown_candidates: _Optional[int] = ..., unknown_candidate_ids: _Optional[_Iterable[int]] = ..., duplicate_candidates: _Optional[int] = ..., ignored_features: _Optional[_Iterable[str]] = ..., dtype: _Optional[str] = ..., took_us: _Optional[int] = ...) -> None: ...

class RankedItem(_message.Message):
    __slots__ = ("item_id", "score", "probability")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    score: float
    probability: float
    def __init__(self, item_id: _Optional[int] = ..., score: _Optional[float] = ..., probability: _Optional[float] = ...) -> None: ...

class ErrorBody(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
