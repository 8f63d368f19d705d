//! `DeleteObjects` in batches of 1,000, shared by the S3 stores that delete many keys.

use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use stepq_results::error::{ErrorClass, ServiceError};

use crate::error::{aws_error, classify_aws_failure, AwsFailureKind};

/// Most keys one `DeleteObjects` request takes.
pub(crate) const DELETE_OBJECTS_LIMIT: usize = 1000;

/// Deletes `keys` from `bucket`, 1,000 a request; a key that fails is an error naming it.
pub(crate) async fn delete_objects(
    client: &Client,
    bucket: &str,
    keys: &[String],
) -> Result<(), ServiceError> {
    for chunk in keys.chunks(DELETE_OBJECTS_LIMIT) {
        let objects = chunk
            .iter()
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(construction_failure)?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(construction_failure)?;
        let out = client
            .delete_objects()
            .bucket(bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| aws_error("s3", "DeleteObjects", e))?;
        if let Some(first) = out.errors().first() {
            let code = first.code().unwrap_or("Unknown").to_string();
            let class = classify_aws_failure(AwsFailureKind::Service, Some(&code), None);
            let message = format!(
                "DeleteObjects: {} of {} keys failed, first `{}`: {}",
                out.errors().len(),
                chunk.len(),
                first.key().unwrap_or("?"),
                first.message().unwrap_or("")
            );
            return Err(ServiceError::new("s3", code, message, class));
        }
    }
    Ok(())
}

/// A `DeleteObjects` request that could not be built (a bug or bad input on our side).
fn construction_failure(e: aws_sdk_s3::error::BuildError) -> ServiceError {
    let message = format!("DeleteObjects: {e}");
    ServiceError::new("s3", "ConstructionFailure", message, ErrorClass::Permanent).with_source(e)
}
