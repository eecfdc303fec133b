// Role assignments: each at the narrowest scope that works, named
// guid(scope id, principal id, role definition GUID) so re-provisioning is idempotent.
//
// The Function App's system-assigned identity (appPrincipalId):
//
// | Role                                 | Scope                 | Why                                        |
// |--------------------------------------|-----------------------|--------------------------------------------|
// | Cognitive Services OpenAI User       | OpenAI account        | chat completions with a bearer token       |
// | Storage Blob Data Owner              | storage account       | host storage (AzureWebJobsStorage), Flex   |
// |                                      |                       | package container, results/{id}.json and   |
// |                                      |                       | inputs/{id}.json blobs                     |
// | Storage Queue Data Reader            | queue `jobs`          | queue trigger: peek, queue length (scaling)|
// | Storage Queue Data Message Processor | queue `jobs`          | queue trigger: dequeue, release, delete    |
// | Storage Queue Data Message Sender    | queue `jobs`          | submit_jobs and put_job output bindings    |
// | Storage Queue Data Message Sender    | queue `results`       | process_job output binding                 |
// | Storage Queue Data Message Sender    | queue `jobs-poison`   | host moves messages after maxDequeueCount  |
// | Monitoring Metrics Publisher         | Application Insights  | Entra ID telemetry ingestion               |
//
// No Storage Queue Data Contributor for the app. What it adds over Reader + Processor +
// Sender is creating and deleting queues. The Functions queue extension only creates a queue
// when a send fails with 404 QueueNotFound (its AddMessageAndCreateIfNotExists sends first, and
// the poison move goes through the same helper); main.bicep creates `jobs`, `jobs-poison` and
// `results`, so that path is never taken. Microsoft's binding table lists Contributor for
// queue outputs for exactly that create-if-missing case. Trade-off: if someone deletes one of
// these queues, sends fail with 403 instead of recreating it; `azd provision` restores it.
//
// Blob: Storage Blob Data Owner on the account is what the Functions host requires for
// identity-based AzureWebJobsStorage (the azure-webjobs-hosts / -secrets containers, leases).
// It already covers the deployment container and the `results` and `inputs` containers, so a
// narrower container-scoped Blob Data Contributor on either would add nothing.
//
// The deploying principal (userPrincipalId, optional):
//
// | Role                           | Scope           | Why                                                  |
// |--------------------------------|-----------------|------------------------------------------------------|
// | Cognitive Services OpenAI User | OpenAI account  | run the handler / `handler doctor` locally (az login) |
// | Storage Blob Data Contributor  | storage account | read results blobs (`az storage blob ... --auth-mode login`) |
// | Storage Queue Data Contributor | storage account | peek/send/requeue jobs, inspect `jobs-poison`        |
//
// (Azure RBAC changes take 5-30 minutes to apply; see docs/deploy.md.)

param storageAccountName string
param jobsQueueName string
param jobsPoisonQueueName string
param resultsQueueName string
param openAiAccountName string
param appInsightsName string

@description('Principal id of the Function App\'s system-assigned identity.')
param appPrincipalId string

@description('Object id of the deploying principal; empty = no roles for it.')
param userPrincipalId string = ''
param userPrincipalType string = 'User'
param grantUserStorageAccess bool = true

// Built-in role definition GUIDs (the table in shared/spec/infra.md; checked by
// tests/infra_consistency.rs). Every role assignment refers to this map, never to a literal.
var roles = {
  'Cognitive Services OpenAI User': '5e0bd9bd-7b93-4f28-af87-19fc36ad61bd'
  'Storage Blob Data Owner': 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  'Storage Blob Data Contributor': 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  'Storage Queue Data Contributor': '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  'Storage Queue Data Reader': '19e7f393-937e-4f77-808e-94535e297925'
  'Storage Queue Data Message Processor': '8a0f0c08-91a1-4084-bc3d-661d67233fed'
  'Storage Queue Data Message Sender': 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'
  'Monitoring Metrics Publisher': '3913510d-42f4-4e42-8a64-420c390055eb'
}

var withUser = !empty(userPrincipalId)
var withUserStorage = withUser && grantUserStorageAccess

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName

  resource queueService 'queueServices' existing = {
    name: 'default'

    resource jobsQueue 'queues' existing = {
      name: jobsQueueName
    }

    resource jobsPoisonQueue 'queues' existing = {
      name: jobsPoisonQueueName
    }

    resource resultsQueue 'queues' existing = {
      name: resultsQueueName
    }
  }
}

resource openAiAccount 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = {
  name: openAiAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

// ---- The Function App's identity ----

resource appOpenAiUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(openAiAccount.id, appPrincipalId, roles['Cognitive Services OpenAI User'])
  scope: openAiAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Cognitive Services OpenAI User'])
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Function App: Azure OpenAI chat completions (Entra ID token)'
  }
}

resource appBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, appPrincipalId, roles['Storage Blob Data Owner'])
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Blob Data Owner'])
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Function App: host storage, deployment package, results and inputs blobs'
  }
}

resource appJobsReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount::queueService::jobsQueue.id, appPrincipalId, roles['Storage Queue Data Reader'])
  scope: storageAccount::queueService::jobsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Reader'])
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Function App: queue trigger on jobs (peek, queue length)'
  }
}

resource appJobsProcessor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount::queueService::jobsQueue.id, appPrincipalId, roles['Storage Queue Data Message Processor'])
  scope: storageAccount::queueService::jobsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Message Processor'])
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Function App: queue trigger on jobs (dequeue, release, delete)'
  }
}

resource appJobsSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount::queueService::jobsQueue.id, appPrincipalId, roles['Storage Queue Data Message Sender'])
  scope: storageAccount::queueService::jobsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Message Sender'])
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Function App: submit_jobs and put_job outputs to jobs'
  }
}

resource appResultsSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount::queueService::resultsQueue.id, appPrincipalId, roles['Storage Queue Data Message Sender'])
  scope: storageAccount::queueService::resultsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Message Sender'])
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Function App: process_job output to results'
  }
}

resource appPoisonSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount::queueService::jobsPoisonQueue.id, appPrincipalId, roles['Storage Queue Data Message Sender'])
  scope: storageAccount::queueService::jobsPoisonQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Message Sender'])
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Function App: host moves failed jobs to jobs-poison'
  }
}

resource appMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, appPrincipalId, roles['Monitoring Metrics Publisher'])
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Monitoring Metrics Publisher'])
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Function App: Application Insights ingestion with Entra ID'
  }
}

// ---- The deploying principal (optional) ----

resource userOpenAiUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (withUser) {
  name: guid(openAiAccount.id, userPrincipalId, roles['Cognitive Services OpenAI User'])
  scope: openAiAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Cognitive Services OpenAI User'])
    principalId: userPrincipalId
    principalType: userPrincipalType
    description: 'Developer: run the handler and handler doctor locally'
  }
}

resource userBlobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (withUserStorage) {
  name: guid(storageAccount.id, userPrincipalId, roles['Storage Blob Data Contributor'])
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Blob Data Contributor'])
    principalId: userPrincipalId
    principalType: userPrincipalType
    description: 'Developer: inspect results blobs'
  }
}

resource userQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (withUserStorage) {
  name: guid(storageAccount.id, userPrincipalId, roles['Storage Queue Data Contributor'])
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Contributor'])
    principalId: userPrincipalId
    principalType: userPrincipalType
    description: 'Developer: inspect, send and requeue job messages'
  }
}
